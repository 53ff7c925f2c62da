"""The Runs tab: the current run live (progress, loss chart, samples, log tail), Stop and Resume, and the history
of past runs."""

from __future__ import annotations

import gradio as gr

from library.gui.context import GuiContext


def build_runs_tab(ctx: GuiContext, train: object, tabs: gr.Tabs) -> None:
    """Build the Runs tab in the current `gr.Tab` context."""
    gr.Markdown("Runs")

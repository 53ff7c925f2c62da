"""The Tools tab (placeholder: built by the tools' UI work, on `library.gui.forms`)."""

from __future__ import annotations

import gradio as gr

from library.gui.context import GuiContext


def build_tools_tab(ctx: GuiContext) -> None:
    """Build the Tools tab's contents in the current `gr.Tab` context."""
    gr.Markdown("Tools: merge, svd_merge, extract, resize, DyLoRA split, convert and check will appear here.")

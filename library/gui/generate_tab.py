"""The Generate tab (placeholder: built by the generation UI work, on `library.gui.forms`)."""

from __future__ import annotations

import gradio as gr

from library.gui.context import GuiContext


def build_generate_tab(ctx: GuiContext) -> None:
    """Build the Generate tab's contents in the current `gr.Tab` context."""
    gr.Markdown("Generate: txt2img / img2img with LoRAs will appear here.")

"""The Train tab: the options of train_network.py / sdxl_train_network.py as a form generated from their
declarations, the dataset, config files, the command-line preview, and Start."""

from __future__ import annotations

import gradio as gr

from library.gui.context import GuiContext
from library.gui.forms import OptionForm, build_form
from library.options.spec import TRAIN_SCRIPTS
from library.options.train import train_options


def build_train_tab(ctx: GuiContext) -> dict[str, OptionForm]:
    """Build the Train tab in the current `gr.Tab` context; returns the form of each training script."""
    forms = {}
    for script in TRAIN_SCRIPTS:
        with gr.Group(visible=script == TRAIN_SCRIPTS[0]):
            forms[script] = build_form(train_options(script), script)
    return forms

"""The Tools tab: one form per tool (merge, SDXL merge, svd_merge, extract, resize in both forms, DyLoRA split, LoRA
and checkpoint conversion, check, image resize), generated from the declarations its script parses
(`library.options.tools.TOOLS`). Run checks the command line as the script would (a bad one shows the script's
one-line error above the form and starts nothing), then runs the script as a subprocess and shows its output, its
error line, check's table of modules, and the files it wrote under the UI's own tools folder."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from library.errors import ToolkitError
from library.gui.context import GuiContext
from library.gui.forms import OptionForm, build_form, mark_error_js
from library.gui.tools_check import HEADERS, module_table
from library.gui.tools_run import checked_run, command_text, new_files, script_argv
from library.options.tools import TOOLS, Tool, check_tool_args
from library.options.tools_lora import CHECK

# tab label of each tool, in the order shown
TABS = {"merge_lora": "Merge", "sdxl_merge_lora": "Merge SDXL", "svd_merge_lora": "SVD merge",
        "extract_lora_from_models": "Extract", "resize_lora": "Resize", "resize_lora_aware": "Resize (recipes)",
        "extract_lora_from_dylora": "DyLoRA split", "convert_lora": "Convert LoRA",
        "convert_diffusers20_original_sd": "Convert checkpoint", "check_lora_weights": "Check",
        "resize_images_to_resolution": "Resize images"}


@dataclass
class ToolPanel:
    """The widgets of one tool: its form and what Run fills in."""

    tool: Tool
    form: OptionForm
    button: gr.Button
    error: gr.Textbox
    command: gr.Textbox
    status: gr.Textbox
    output: gr.Textbox
    files: gr.File
    table: gr.Dataframe | None = None

    def outputs(self) -> list[gr.components.Component]:
        extra = [self.table] if self.table is not None else []
        return [self.error, self.command, self.status, self.output, self.files, *extra]


def build_tools_tab(ctx: GuiContext) -> dict[str, ToolPanel]:
    """Build the Tools tab in the current `gr.Tab` context; returns each tool's panel by tool name."""
    tools_dir = ctx.output_dir("tools")
    gr.Markdown(f"Each form is the tool's command line: relative paths are read from `{ctx.root}`; files written "
                f"under `{tools_dir}` can be downloaded here. Fields left at their default are not passed.")
    panels: dict[str, ToolPanel] = {}
    with gr.Tabs(elem_id="tools-tabs"):
        others = {n: t.title for n, t in TOOLS.items() if n not in TABS}  # tools declared since: a tab each too
        for name, label in {**TABS, **others}.items():
            with gr.Tab(label, id=f"tool-{name}", elem_id=f"tab-tool-{name}"):
                panels[name] = _build_panel(ctx, TOOLS[name])
    return panels


def _build_panel(ctx: GuiContext, tool: Tool) -> ToolPanel:
    name = tool.name
    gr.Markdown(f"**`{tool.script}`**: {tool.description.splitlines()[0]}  \n`{tool.usage()}`")
    error = gr.Textbox(label="error", visible=False, interactive=False, elem_id=f"tool-error-{name}",
                       elem_classes=["error-line"])
    groups = {o.group for o in tool.options()}
    form = build_form(tool.options(), name, open_groups=groups)
    with gr.Row():
        button = gr.Button(f"Run {tool.prog}", variant="primary", elem_id=f"tool-run-{name}")
    command = gr.Textbox(label="command line", interactive=False, max_lines=3, elem_id=f"tool-cmd-{name}")
    status = gr.Textbox(label="status", interactive=False, max_lines=1, elem_id=f"tool-status-{name}")
    table = None
    if name == CHECK:
        table = gr.Dataframe(headers=HEADERS, label="modules", interactive=False, wrap=True,
                             elem_id="tool-check-table")
    output = gr.Textbox(label="output", interactive=False, lines=8, max_lines=30, autoscroll=True,
                        elem_id=f"tool-output-{name}", elem_classes=["mono"])
    files = gr.File(label="files written under the UI's tools folder", file_count="multiple", interactive=False,
                    visible=False, elem_id=f"tool-files-{name}")
    panel = ToolPanel(tool, form, button, error, command, status, output, files, table)

    def on_run(*values: object):  # noqa: ANN202 - a generator of gradio updates
        yield from _run(ctx, panel, values)

    button.click(on_run, inputs=form.inputs(), outputs=panel.outputs(), concurrency_limit=2,
                 show_progress="hidden")  # the status box says it runs: no spinner over every output
    error.change(None, inputs=[error], js=mark_error_js(form))
    gr.on([c.change for c in form.inputs()], lambda *values: _preview(panel, values), inputs=form.inputs(),
          outputs=[command], show_progress="hidden")
    return panel


def _preview(panel: ToolPanel, values: tuple) -> str:
    try:
        return command_text(panel.tool.script, script_argv(panel.form, panel.form.read(values)))
    except ToolkitError as e:
        return f"error: {e}"


def _run(ctx: GuiContext, panel: ToolPanel, values: tuple):  # noqa: ANN202 - a generator of gradio updates
    """Check the command line (a bad one: its error, nothing started), then run the tool and stream its output."""
    tool = panel.tool

    def argv_of() -> list[str]:
        argv = script_argv(panel.form, panel.form.read(values))
        check_tool_args(tool.name, argv)
        return argv

    for step in checked_run(ctx.root, tool.script, argv_of):
        run = step.run
        if step.error:
            yield _updates(panel, error=step.error, status="not started: fix the command line")
        elif run is None:
            yield _updates(panel, command=step.command, status="starting")
        elif run.returncode is None:
            yield _updates(panel, command=step.command, status=run.status(), output=run.output)
        else:  # ended: with the files it wrote and, for the check tool, its table
            files = [ctx.served.check(p) for p in new_files(ctx.output_dir("tools"), run.started)]
            table = _check_table(ctx, run.argv) if panel.table is not None and run.returncode in (0, 1) else None
            yield _updates(panel, error=run.error, command=step.command, status=run.status(), output=run.output,
                           files=files or None, table=table)


def _check_table(ctx: GuiContext, argv: list[str]) -> list[list[object]] | None:
    values = check_tool_args(CHECK, argv)
    path = ctx.root / values["file"]
    try:
        return module_table(path)
    except ToolkitError:
        return None  # the script's own error line says why


def _updates(panel: ToolPanel, error: str = "", command: str | None = None, status: str = "",
             output: str = "", files: list[str] | None = None, table: list | None = None) -> list[object]:
    out: list[object] = [gr.update(value=error, visible=bool(error)),
                         gr.update() if command is None else command, status, output,
                         gr.update(value=files, visible=bool(files))]
    if panel.table is not None:
        out.append(gr.update() if table is None else table)
    return out

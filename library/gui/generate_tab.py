"""The Generate tab: gen_img_diffusers.py's options as fields generated from their declarations (prompt, negative,
size, steps, sampler, guidance, seed up top; the rest folded below), any number of LoRAs with multipliers, an
img2img source, and the images with the parameters stored in them. Generate checks the command line as the script
would (a bad one: its one-line error above the form, nothing started), then runs the script as a subprocess into a
fresh folder under the UI's own generate folder; only those images are shown."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from library.errors import ToolkitError
from library.gui.context import GuiContext
from library.gui.forms import OptionForm, build_form, form_argv, make_field, mark_error_js
from library.gui.generate_run import (
    DEFAULT_VALUES,
    GEN_SCRIPT,
    MAIN_OPTIONS,
    SET_BY_TAB,
    check_generation_argv,
    image_parameters,
    lora_argv,
    new_outdir,
    parse_lora_lines,
)
from library.gui.tools_run import checked_run, command_text
from library.options.generate import gen_options
from library.options.spec import GEN

ROWS = (("ckpt",), ("prompt",), ("negative_prompt",), ("W", "H", "steps"), ("sampler", "scale", "seed"),
        ("images_per_prompt",))


@dataclass
class GeneratePanel:
    """The Generate tab's widgets (`main` holds the top fields, `more` the folded groups)."""

    main: OptionForm
    more: OptionForm
    loras: gr.Textbox
    image: gr.Image
    button: gr.Button
    error: gr.Textbox
    command: gr.Textbox
    status: gr.Textbox
    gallery: gr.Gallery
    parameters: gr.Textbox
    log: gr.Textbox

    def inputs(self) -> list[gr.components.Component]:
        return [*self.main.inputs(), *self.more.inputs(), self.loras, self.image]

    def outputs(self) -> list[gr.components.Component]:
        return [self.error, self.command, self.status, self.gallery, self.parameters, self.log]

    def argv(self, values: tuple, outdir: Path | None) -> list[str]:
        """The command line of the widget values (with `--outdir` when given)."""
        n_main, n_more = len(self.main.fields), len(self.more.fields)
        main = self.main.read(values[:n_main])
        more = self.more.read(values[n_main:n_main + n_more])
        lora_text, image = values[n_main + n_more:]
        argv = [*form_argv(self.main, main), *form_argv(self.more, more)]
        argv += lora_argv(parse_lora_lines(str(lora_text or "")), "--network_module" in argv)
        if image:
            argv += ["--image_path", str(image)]
        return argv + (["--outdir", str(outdir)] if outdir else [])


def build_generate_tab(ctx: GuiContext) -> GeneratePanel:
    """Build the Generate tab in the current `gr.Tab` context."""
    options = {o.name: o for o in gen_options()}
    main = OptionForm(GEN)
    with gr.Row():
        with gr.Column(scale=3):
            error = gr.Textbox(label="error", visible=False, interactive=False, elem_id="gen-error",
                               elem_classes=["error-line"])
            for row in ROWS:
                with gr.Row(equal_height=False):
                    for name in row:
                        f = make_field(options[name], GEN)
                        if name in DEFAULT_VALUES and (name != "ckpt" or (ctx.root / DEFAULT_VALUES[name]).exists()):
                            f.component.value = DEFAULT_VALUES[name]
                        main.fields[name] = f
            loras = gr.Textbox(label="LoRAs", lines=3, elem_id="gen-loras",
                               info="one per line: file and multiplier, e.g. `output/quickstart.safetensors 0.8` "
                                    "(multiplier 1 when left out); paths are read from " + str(ctx.root),
                               placeholder="output/quickstart.safetensors 1.0")
            with gr.Accordion("img2img", open=False):
                image = gr.Image(label="source image (img2img; empty: txt2img)", type="filepath", sources=["upload"],
                                 elem_id="gen-image")
                f = make_field(options["strength"], GEN)
                main.fields["strength"] = f
            more = build_form(gen_options(), GEN, skip=(*MAIN_OPTIONS, *SET_BY_TAB))
            button = gr.Button("Generate", variant="primary", elem_id="gen-run")
            command = gr.Textbox(label="command line", interactive=False, max_lines=3, elem_id="gen-cmd")
            status = gr.Textbox(label="status", interactive=False, max_lines=1, elem_id="gen-status")
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="images", columns=3, object_fit="contain", height=420, elem_id="gen-gallery")
            parameters = gr.Textbox(label="parameters (stored in each PNG)", interactive=False, lines=6,
                                    elem_id="gen-params")
            log = gr.Textbox(label="log", interactive=False, lines=6, max_lines=20, autoscroll=True, elem_id="gen-log",
                             elem_classes=["mono"])
    panel = GeneratePanel(main, more, loras, image, button, error, command, status, gallery, parameters, log)

    def on_generate(*values: object):  # noqa: ANN202 - a generator of gradio updates
        yield from _generate(ctx, panel, values)

    button.click(on_generate, inputs=panel.inputs(), outputs=panel.outputs(), concurrency_limit=1,
                 show_progress="hidden")  # the status box says it runs: no spinner over every output
    error.change(None, inputs=[error], js=mark_error_js(main, more))
    gr.on([c.change for c in panel.inputs()], lambda *v: _preview(panel, v), inputs=panel.inputs(),
          outputs=[command], show_progress="hidden")
    return panel


def _preview(panel: GeneratePanel, values: tuple) -> str:
    try:
        return command_text(GEN_SCRIPT, panel.argv(values, None))
    except ToolkitError as e:
        return f"error: {e}"


def _generate(ctx: GuiContext, panel: GeneratePanel, values: tuple):  # noqa: ANN202 - a generator of updates
    """Check the command line (a bad one: its error, nothing started), then generate and show the images."""
    outdir = new_outdir(ctx.output_dir("generate"))

    def argv_of() -> list[str]:
        argv = panel.argv(values, outdir)
        check_generation_argv(argv)
        return argv

    hidden = gr.update(value="", visible=False)
    for step in checked_run(ctx.root, GEN_SCRIPT, argv_of):
        run = step.run
        if step.error:
            yield gr.update(value=step.error, visible=True), gr.update(), "not started: fix the command line", \
                gr.update(), gr.update(), ""
        elif run is None:
            yield hidden, step.command, "starting", [], "", ""
        elif run.returncode is None:
            yield hidden, step.command, run.status(), gr.update(), gr.update(), run.output
        else:  # ended: the images with their parameters
            images = sorted(outdir.glob("*.png")) if outdir.is_dir() else []
            shown = [(ctx.served.check(p), _caption(image_parameters(p))) for p in images]
            params = "\n\n".join(f"{p.name}\n{image_parameters(p)}" for p in images)
            yield gr.update(value=run.error, visible=bool(run.error)), step.command, run.status(), shown, params, \
                run.output


def _caption(parameters: str) -> str:
    """The settings line of an image's parameters (steps, sampler, guidance, seed, size)."""
    lines = [ln for ln in parameters.splitlines() if ln.startswith("Steps:")]
    return lines[0] if lines else ""

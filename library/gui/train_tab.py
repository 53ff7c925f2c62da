"""The Train tab: the options of train_network.py and sdxl_train_network.py as forms generated from their
declarations (one per script, the other hidden), the `--network_args` of the chosen network module as fields of
their own (declared in library/options/network_args.py), the dataset preview, config files (load, save) and the
live command line. Start is wired by the Runs tab (it starts the run and shows it)."""

from __future__ import annotations

import logging
import os
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from library.errors import ToolkitError
from library.gui.context import GuiContext
from library.gui.dataset_preview import FOLDERS_HELP, describe_datasets
from library.gui.forms import OptionForm, build_form, field_props, form_argv, mark_error_js, split_words
from library.options.network_args import NETWORK_MODULES, network_arg_options, split_network_args
from library.options.spec import TRAIN, TRAIN_SCRIPTS, Option
from library.options.train import train_options

log = logging.getLogger(__name__)

QUICKSTART = "examples/quickstart.toml"
# options the page sets through its own controls: the config-file buttons, and the run manager's progress feed
PAGE_OWNED = ("config_file", "output_config", "progress_jsonl")


@dataclass
class TrainUI:
    """The Train tab's widgets and the conversions between them and a command line. Both training scripts share
    one form: their options are declared once (`train_options`), and a field whose status differs between them
    follows the chosen script (`script_updates`)."""

    ctx: GuiContext
    form: OptionForm | None = None
    options: dict[str, dict[str, Option]] = field(default_factory=dict)  # per training script, by name
    net_forms: dict[str, OptionForm] = field(default_factory=dict)  # per network module
    net_groups: dict[str, gr.Group] = field(default_factory=dict)
    script: gr.Radio | None = None
    error: gr.Markdown | None = None
    preview: gr.Textbox | None = None
    start: gr.Button | None = None

    # ---- the flat list of inputs every handler takes ----------------------------------------------------------
    def inputs(self) -> list[gr.components.Component]:
        comps: list = [self.script, *self.form.inputs()]
        for form in self.net_forms.values():
            comps += form.inputs()
        return comps

    def split(self, values: Sequence[object]) -> tuple[str, dict[str, object], dict[str, dict]]:
        """(script, widget values of the form, widget values per network-args form) of `inputs()` values."""
        script, rest = values[0], list(values[1:])
        n = len(self.form.fields)
        widgets, rest = self.form.read(rest[:n]), rest[n:]
        per_module = {}
        for name, form in self.net_forms.items():
            n = len(form.fields)
            per_module[name], rest = form.read(rest[:n]), rest[n:]
        return str(script), widgets, per_module

    def argv(self, values: Sequence[object]) -> tuple[str, list[str]]:
        """The script and the command line the page's fields stand for (only what differs from the defaults)."""
        script, widgets, per_module = self.split(values)
        widgets = {k: v for k, v in widgets.items() if k in self.options[script]}
        module = str(widgets.get("network_module") or "").strip() or "networks.lora"
        words = []
        if module in self.net_forms:
            net_argv = self.net_forms[module].argv(per_module[module])
            words = [f"{k[2:]}={v}" for k, v in zip(net_argv[::2], net_argv[1::2])]
        extra = split_words(str(widgets.get("network_args") or ""), "network_args")
        widgets["network_args"] = shlex.join(words + extra)
        return script, form_argv(self.form, widgets, script)

    def fill(self, script: str, values: dict) -> list[object]:
        """Widget values (in `inputs()` order) showing typed option `values`; the fields not named are reset."""
        values = dict(values)
        module = str(values.get("network_module") or "networks.lora")
        known, rest = split_network_args(values.get("network_args"), module)
        values["network_args"] = rest or None
        out: list = [script, *self.form.fill(values)]
        for name, form in self.net_forms.items():
            out += form.fill(known if name == module else {})
        return out

    def script_fields(self) -> list[gr.components.Component]:
        """The fields whose label or state depends on the chosen script (options declared differently in each)."""
        return [self.form.fields[n].component for n in self._differing()]

    def script_updates(self, script: str) -> list:
        """Updates of `script_fields()` for `script`: its status (refused: disabled), help, or absent."""
        out = []
        for name in self._differing():
            option = self.options[script].get(name)
            out.append(gr.update(**field_props(option, script)) if option else
                       gr.update(interactive=False, label=f"{name} (not an option of {script}.py)"))
        return out

    def _differing(self) -> list[str]:
        a, b = (self.options[s] for s in TRAIN_SCRIPTS)
        return [n for n in self.form.fields if n not in a or n not in b or
                field_props(a[n], TRAIN_SCRIPTS[0]) != field_props(b[n], TRAIN_SCRIPTS[1])]


def parse_page(script: str, argv: list[str]) -> dict:
    """Run the script's own parser and checks on the page's command line (in this process, nothing starts);
    returns the option values. Errors are the command line's ToolkitErrors."""
    from library.options.parse import build_parser, check_values, parse_values
    from library.options.train import EXCLUSIVE, config_from_values, cross_checks

    parser = build_parser(script)
    values = parse_values(parser, argv)
    check_values(train_options(script), values, script, EXCLUSIVE)
    problems = cross_checks(config_from_values(values))
    if problems:
        raise ToolkitError(problems[0])
    return values


def load_config(script: str, path: str) -> dict:
    """The option values a config TOML sets (checked against the script's parser, as --config_file is)."""
    from library.options.configfile import read_config_file
    from library.options.parse import build_parser
    from library.options.train import NOT_SETTINGS

    if not str(path).strip():
        raise ToolkitError("--config_file: give the path of a TOML file")
    return read_config_file(build_parser(script), path.strip(), skip=NOT_SETTINGS)


def save_config(script: str, argv: list[str], path: str) -> Path:
    """Write the page's options as a config TOML that `<script>.py --config_file PATH` runs unchanged: the
    script's own `--output_config` writes it (to a temporary name, then renamed over PATH)."""
    from library.options.parse import parse_training_args

    path = path.strip()
    if not path:
        raise ToolkitError("--config_file: give the path to save to")
    target = Path(path if path.endswith(".toml") else path + ".toml")
    if target.is_dir():
        raise ToolkitError(f"--config_file {target}: is a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".toml", dir=target.parent, prefix=".gui-")
    os.close(fd)
    os.unlink(tmp)
    try:
        parse_training_args(["--config_file", tmp, "--output_config", *argv], script)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def error_text(e: Exception) -> str:
    """The one line the command line would print."""
    return f"error: {e}"


def build_train_tab(ctx: GuiContext) -> TrainUI:
    """Build the Train tab in the current `gr.Tab` context; returns its widgets (the Runs tab wires Start)."""
    ui = TrainUI(ctx)
    quickstart = _quickstart_values(ctx)
    ui.error = gr.Markdown("", elem_id="error-box")
    with gr.Row(equal_height=True):
        ui.script = gr.Radio(list(TRAIN_SCRIPTS), value=TRAIN, label="training script",
                             info="train_network: SD1/SD2 (and SDXL); sdxl_train_network: SDXL's command line",
                             elem_id="train-script", scale=3)
        ui.start = gr.Button("Start training", variant="primary", elem_id="start-training", scale=1)
    with gr.Row(equal_height=True):
        cfg_path = gr.Textbox(QUICKSTART, label="config file (sd-scripts TOML)", elem_id="config-path", scale=4,
                              info="Load fills the page from it; Save writes the page's options to it (runs "
                                   "unchanged with --config_file)")
        load = gr.Button("Load", elem_id="config-load", scale=1)
        save = gr.Button("Save", elem_id="config-save", scale=1)
    ui.preview = gr.Textbox("", label="command line", lines=2, max_lines=8, interactive=False,
                            elem_id="cmd-preview", buttons=["copy"])
    with gr.Accordion("dataset: folders and what was found", open=False, elem_id="dataset-box"):
        gr.Markdown(FOLDERS_HELP)
        find = gr.Button("Show what training would read", elem_id="dataset-find")
        found = gr.Markdown("", elem_id="dataset-found")
    with gr.Accordion("network_args of the network module", open=False, elem_id="netargs-box"):
        gr.Markdown("The `--network_args key=value` settings of the module named in `network_module`; keys not "
                    "listed here go in the `network_args` field (network group).")
        for module in NETWORK_MODULES:
            with gr.Group(visible=module == "networks.lora") as grp:
                gr.Markdown(f"`{module}`")
                ui.net_forms[module] = build_form(network_arg_options(module), module,
                                                  open_groups=("LoCon (3x3 convolutions)", "DyLoRA"))
            ui.net_groups[module] = grp
    ui.options = {s: {o.name: o for o in train_options(s)} for s in TRAIN_SCRIPTS}
    union: dict[str, Option] = {}
    for script in TRAIN_SCRIPTS:  # the same options today; one declared for only one script would still show
        union.update({k: v for k, v in ui.options[script].items() if k not in union})
    ui.form = build_form(union.values(), TRAIN, skip=PAGE_OWNED, open_groups=("model", "network", "dataset", "training"))
    _wire(ui, cfg_path, load, save, find, found, quickstart)
    return ui


def _quickstart_values(ctx: GuiContext) -> dict:
    try:
        return load_config(TRAIN, str(ctx.root / QUICKSTART)) if (ctx.root / QUICKSTART).is_file() else {}
    except ToolkitError as e:
        log.warning("quickstart config not loaded: %s", e)
        return {}


def _wire(ui: TrainUI, cfg_path: gr.Textbox, load: gr.Button, save: gr.Button, find: gr.Button,
          found: gr.Markdown, quickstart: dict) -> None:
    inputs = ui.inputs()
    shown = [*ui.net_groups.values(), *ui.script_fields()]

    def visibility(script: str, module: str) -> list:
        """The network_args fields of `module`, and the fields that depend on `script`."""
        return [gr.update(visible=m == module) for m in ui.net_groups] + ui.script_updates(script)

    def preview(*values: object) -> str:
        script, argv = ui.argv(values)
        return shlex.join(["python", f"{script}.py", *argv])

    def live_preview(message: str, *values: object) -> tuple:
        """The preview on every change; an error shown above the form goes once the page is edited."""
        try:
            text = preview(*values)
        except ToolkitError as e:
            return gr.update(), error_text(e)
        return text, "" if str(message).startswith("error:") else gr.update()

    def on_load(path: str, *values: object) -> list:
        script = str(values[0])
        try:
            loaded = load_config(script, path)
        except ToolkitError as e:
            return [gr.update()] * (len(inputs) + len(shown) + 1) + [error_text(e)]
        new = ui.fill(script, loaded)
        module = str(loaded.get("network_module") or "networks.lora")
        return [*new, *visibility(script, module), preview(*new), f"loaded {path}"]

    def on_save(path: str, *values: object) -> str:
        try:
            script, argv = ui.argv(values)
            written = save_config(script, argv, path)
        except ToolkitError as e:
            return error_text(e)
        return f"saved {written}: run it with `python {script}.py --config_file {written}`"

    def on_script(*values: object) -> list:
        return [*ui.script_updates(str(values[0])), preview(*values)]

    def on_module(module: str) -> list:
        return [gr.update(visible=m == str(module or "").strip()) for m in ui.net_groups]

    def on_find(*values: object) -> tuple[str, str]:
        try:
            script, argv = ui.argv(values)
            return describe_datasets(parse_page(script, argv)), ""
        except (ToolkitError, OSError) as e:
            return "", error_text(e)

    # .change, not .input: gradio's input event misses deletions (Backspace), and a load must refresh it too;
    # always_last folds a burst of changes (a config loaded) into one more call
    triggers = [c.change for c in inputs[1:]]
    gr.on(triggers, live_preview, inputs=[ui.error, *inputs], outputs=[ui.preview, ui.error], show_progress="hidden",
          trigger_mode="always_last")
    load.click(on_load, inputs=[cfg_path, *inputs], outputs=[*inputs, *shown, ui.preview, ui.error])
    save.click(on_save, inputs=[cfg_path, *inputs], outputs=[ui.error])
    ui.script.input(on_script, inputs=inputs, outputs=[*ui.script_fields(), ui.preview])
    module = ui.form.fields["network_module"].component
    module.change(on_module, inputs=[module], outputs=list(ui.net_groups.values()), queue=False)
    find.click(on_find, inputs=inputs, outputs=[found, ui.error])
    ui.error.change(None, inputs=[ui.error], js=mark_error_js(ui.form))
    # opens with the quickstart preloaded: one click on Start reproduces README command 1
    filled = ui.fill(TRAIN, quickstart)
    for comp, value in zip(inputs, filled, strict=True):
        comp.value = value
    for comp, update in zip(ui.script_fields(), ui.script_updates(TRAIN), strict=True):
        for key, value in update.items():
            if key != "__type__":
                setattr(comp, key, value)
    ui.preview.value = preview(*filled)

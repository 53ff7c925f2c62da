"""Gradio forms generated from option declarations (`library.options.spec.Option`), for any script.

A form holds one field per option, grouped in accordions as `-h` groups them; each field is labelled with the
option's command-line name and shows its help, default and choices. Refused options are shown disabled with their
reason. A field holds the option's command-line text, so what the form gives back is an argv (only the fields that
differ from their default) that goes to the script's own parser: the page and the command line cannot disagree.

    with gr.Blocks():
        form = build_form(train_options("train_network"), "train_network")
    button.click(lambda *v: form.argv(form.read(v)), inputs=form.inputs(), outputs=...)
    loader.click(lambda: form.fill(values), outputs=form.inputs())
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import gradio as gr

from library.options.parser import help_text
from library.options.spec import IGNORED, REFUSED, Option


@dataclass
class Field:
    """One option's widget: a Checkbox (flag), a Dropdown (choices) or a Textbox (command-line words)."""

    option: Option
    component: gr.components.Component
    enabled: bool = True

    @property
    def name(self) -> str:
        return self.option.name

    @property
    def is_flag(self) -> bool:
        return self.option.flag

    def default_text(self) -> object:
        """What the widget shows for the option's default."""
        return False if self.is_flag else value_to_text(self.option, self.option.default)


@dataclass
class OptionForm:
    """The fields of one script's options, in help order; `read`, `argv` and `fill` convert to and from them."""

    script: str
    fields: dict[str, Field] = field(default_factory=dict)
    groups: dict[str, gr.Accordion] = field(default_factory=dict)

    def inputs(self) -> list[gr.components.Component]:
        """The widgets in a fixed order: use as `inputs=` / `outputs=` of gradio events."""
        return [f.component for f in self.fields.values()]

    def read(self, widget_values: Sequence[object]) -> dict[str, object]:
        """Widget values (in `inputs()` order, as a gradio event passes them) by option name."""
        return dict(zip(self.fields, widget_values, strict=True))

    def argv(self, widget_values: Mapping[str, object]) -> list[str]:
        """The command line of the widget values: `--name words...` for each field that differs from its default."""
        return form_argv(self, widget_values)

    def fill(self, values: Mapping[str, object], reset: bool = True) -> list[object]:
        """Widget values for typed option values (a parsed config); others reset to default unless `reset=False`."""
        return fill_form(self, values, reset)


def value_to_text(option: Option, value: object) -> str:
    """An option value as the words a user would type for it (lists: one quoted word per item)."""
    if value is None or value is False:
        return ""
    if isinstance(value, (list, tuple)):
        return shlex.join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # 8.0 -> "8", as a user types it (the option's type gives the float back)
    return str(value)


def field_info(option: Option, script: str) -> str:
    """The text shown under a field: the help (with default and status, as -h prints it) and the choices."""
    text = help_text(option, script).replace("%%", "%")
    if option.choices:
        text += "  choices: " + ", ".join(map(str, option.choices))
    if option.nargs in ("*", "+"):
        text += "  (several values: separate them with spaces; quote a value that holds spaces)"
    return text


def elem_id(script: str, name: str, kind: str = "opt") -> str:
    """The HTML id of an option's field (`opt-train_network-network_dim`; dots in module names become `_`), or
    of a group's accordion with kind="grp"."""
    return f"{kind}-{re.sub(r'[^A-Za-z0-9_-]', '_', script)}-{re.sub(r'[^A-Za-z0-9_-]', '_', name)}"


def field_props(option: Option, script: str) -> dict[str, object]:
    """The label, info and interactivity of an option's field in `script` (refused: disabled, with the reason)."""
    status, why = option.status_in(script)
    label = option.name if status != REFUSED else f"{option.name} (refused: {why})"
    if status == IGNORED:
        label = f"{option.name} (ignored here)"
    return {"label": label, "info": field_info(option, script), "interactive": status != REFUSED}


def make_field(option: Option, script: str) -> Field:
    """The widget of one option (created in the current gradio context)."""
    props = field_props(option, script)
    enabled = bool(props["interactive"])
    common = {**props, "elem_id": elem_id(script, option.name), "elem_classes": ["opt-field"]}
    if option.flag:
        comp = gr.Checkbox(value=False, **common)
    elif option.choices and option.nargs is None:
        choices = [str(c) for c in option.choices]
        if option.default is None:
            choices = ["", *choices]
        comp = gr.Dropdown(choices=choices, value=value_to_text(option, option.default), allow_custom_value=False,
                           **common)
    else:
        comp = gr.Textbox(value=value_to_text(option, option.default), placeholder=option.describe_default(),
                          max_lines=1, **common)
    return Field(option, comp, enabled)


def build_form(options: Iterable[Option], script: str, *, skip: Iterable[str] = (),
               open_groups: Iterable[str] = (),
               on_field: Callable[[Field], None] | None = None) -> OptionForm:
    """Build the fields of `options` in the current `gr.Blocks` context: one accordion per group (help order),
    fields in two columns (by FORM_CSS, not a gr.Row per pair: fewer components make every event cheaper). `skip`
    leaves options out (a caller that shows them its own way); `on_field` is called with each field once made."""
    skip, open_groups = set(skip), set(open_groups)
    form = OptionForm(script)
    by_group: dict[str, list[Option]] = {}
    for o in options:
        if o.name not in skip:
            by_group.setdefault(o.group, []).append(o)
    for group, opts in by_group.items():
        with gr.Accordion(group or "other", open=group in open_groups, elem_id=elem_id(script, group, "grp"),
                          elem_classes=["opt-group"]) as acc:
            form.groups[group] = acc
            for o in opts:  # no gr.Row per pair: the page's CSS (FORM_CSS) lays the fields out in columns
                f = make_field(o, script)
                form.fields[o.name] = f
                if on_field is not None:
                    on_field(f)
    return form


def form_argv(form: OptionForm, widget_values: Mapping[str, object], script: str | None = None) -> list[str]:
    """The argv of widget values: only fields that differ from their default, in help order, leaving out options
    refused in `script` (default: the form's). Text fields are split as a shell would split them (quotes group
    words) but nothing ever runs through a shell."""
    argv: list[str] = []
    for name, f in form.fields.items():
        enabled = f.enabled if script is None else f.option.status_in(script)[0] != REFUSED
        if name not in widget_values or not enabled:
            continue
        value = widget_values[name]
        if f.is_flag:
            if value:
                argv.append(f"--{name}")
            continue
        if f.option.nargs == "count":
            count = int(float(value or 0))
            argv += [f.option.aliases[0] if f.option.aliases else f"--{name}"] * count
            continue
        text = "" if value is None else str(value).strip()
        if text == str(f.default_text()).strip() or (text == "" and f.option.nargs is None):
            continue
        if f.option.nargs in ("*", "+") or (isinstance(f.option.nargs, int) and f.option.nargs > 1):
            argv += [f"--{name}", *split_words(text, name)]
        else:
            argv += [f"--{name}", text]
    return argv


def split_words(text: str, name: str) -> list[str]:
    """The words of a several-value field (shell quoting rules, no shell)."""
    from library.errors import ToolkitError

    try:
        return shlex.split(text)
    except ValueError as e:
        raise ToolkitError(f"--{name}: {e}") from None


def fill_form(form: OptionForm, values: Mapping[str, object], reset: bool = True) -> list[object]:
    """Widget values, in `inputs()` order, showing typed option `values` (e.g. from a config TOML); fields not in
    `values` go back to their default (or stay as they are with `reset=False`)."""
    out: list[object] = []
    for name, f in form.fields.items():
        if name in values:
            value = values[name]
            out.append(bool(value) if f.is_flag else value_to_text(f.option, value))
        else:
            out.append(f.default_text() if reset else gr.update())
    return out


def widget_defaults(form: OptionForm) -> dict[str, object]:
    """The widget values of an untouched form, by option name."""
    return {name: f.default_text() for name, f in form.fields.items()}


# two columns of fields in each group's accordion (gradio puts a run of fields in one `.form` block), and the mark
# of a field named by an error line
FORM_CSS = """
.opt-group .form { display: grid !important; grid-template-columns: repeat(2, minmax(0, 1fr)); }
.opt-group .form > .block { min-width: 0 !important; }
.field-has-error { box-shadow: inset 0 0 0 2px #b00020 !important; }
.field-error-note { color: #b00020; font-family: ui-monospace, monospace; font-size: 0.85em; margin-top: 4px;
                    white-space: pre-wrap; }
"""


def mark_error_js(*forms: OptionForm) -> str:
    """A browser-side handler for an error box's change: when the line names an option of `forms`
    (`error: --network_dim -3: ...`), open that field's group, scroll to the field and show the line under it;
    any earlier mark goes. Runs in the page only (no server round trip)."""
    where = {name: [elem_id(form.script, name), _group_id(form, f.option.group)]
             for form in forms for name, f in form.fields.items()}
    return _MARK_JS.replace("WHERE", json.dumps(where))


_MARK_JS = """(message) => {
  const where = WHERE;
  document.querySelectorAll('.field-error-note').forEach((e) => e.remove());
  document.querySelectorAll('.field-has-error').forEach((e) => e.classList.remove('field-has-error'));
  const line = String(message || '').replace(/`/g, '').split('\\n')[0];
  const hit = /^error: --([A-Za-z0-9_]+)/.exec(line);
  if (!hit || !(hit[1] in where)) return [];
  const [field, group] = where[hit[1]];
  const toggle = group && document.querySelector('#' + group + ' > button.label-wrap');
  if (toggle && !toggle.classList.contains('open')) toggle.click();  // gradio renders a group's fields once open
  let tries = 0;
  const mark = () => {
    const el = document.getElementById(field);
    if (!el || el.offsetParent === null) {
      if (++tries < 100) setTimeout(mark, 100);
      return;
    }
    el.classList.add('field-has-error');
    const note = document.createElement('div');
    note.className = 'field-error-note';
    note.id = field + '-error';
    note.textContent = line;
    el.appendChild(note);
    el.scrollIntoView({block: 'center'});
  };
  mark();
  return [];
}"""


def _group_id(form: OptionForm, group: str) -> str | None:
    return elem_id(form.script, group, "grp") if group in form.groups else None

"""Write the option tables of docs/train_network.md, docs/gen_img_diffusers.md and docs/tool_options.md (every
tool of networks/ and tools/) from the option declarations (library/options), so the docs say what `-h` says.

    python tools/options_doc.py            # rewrite the tables between the <!-- options:... --> markers
    python tools/options_doc.py --check    # exit 1 when a doc differs from the declarations
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from library.options.generate import gen_options  # noqa: E402
from library.options.spec import GEN, IGNORED, REFUSED, TRAIN, Option  # noqa: E402
from library.options.tools import TOOLS  # noqa: E402
from library.options.train import dataset_keys, train_options  # noqa: E402

LEVEL_NAMES = {"general": "`[general]`", "dataset": "`[[datasets]]`", "subset": "`[[datasets.subsets]]`"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _names(o: Option) -> str:
    if o.positional:
        return f"`{o.name.upper()}`" + (" ..." if o.nargs == "+" else "")
    if o.nargs == "count":
        return ", ".join(f"`{a}`" for a in o.aliases)
    return ", ".join(f"`{n}`" for n in (f"--{o.name}", *o.aliases))


def _status(o: Option, script: str) -> str:
    status, why = o.status_in(script)
    return {REFUSED: f"**refused**: {why}", IGNORED: f"ignored: {why}"}.get(status, "")


def option_tables(options: list[Option], script: str) -> str:
    """One markdown table per option group: name, default, what it does, status."""
    out: list[str] = []
    group = None
    for o in options:
        if o.group != group:
            group = o.group
            out += ["", f"**{group}**", "", "| option | default | what it does | status |", "|---|---|---|---|"]
        default = "required" if o.required or o.positional else \
            "off" if o.flag else (o.describe_default() or "—")
        out.append(f"| {_names(o)} | {_cell(default)} | {_cell(o.help)} | {_cell(_status(o, script))} |")
    return "\n".join(out[1:]) + "\n"


def dataset_table() -> str:
    """The keys of a dataset TOML: where each may appear, its default and its status."""
    out = ["| key | allowed in | default | what it does | status |", "|---|---|---|---|---|"]
    for key, o in sorted(dataset_keys().items()):
        where = ", ".join(LEVEL_NAMES[level] for level in o.dataset)
        default = "false" if o.flag else (o.describe_default() or "—")
        out.append(f"| `{key}` | {where} | {_cell(default)} | {_cell(o.help)} | {_cell(_status(o, TRAIN))} |")
    return "\n".join(out) + "\n"


def sections() -> dict[tuple[str, str], str]:
    """(doc file, marker name) -> the generated text between its markers."""
    return {
        ("docs/train_network.md", "train_network"): option_tables(train_options(TRAIN), TRAIN),
        ("docs/train_network.md", "dataset_keys"): dataset_table(),
        ("docs/gen_img_diffusers.md", "gen_img_diffusers"): option_tables(gen_options(), GEN),
        **{("docs/tool_options.md", name): option_tables(tool.options(), name) for name, tool in TOOLS.items()},
    }


def render(text: str, marker: str, body: str) -> str:
    """`text` with the lines between `<!-- options:marker -->` and `<!-- /options:marker -->` replaced by `body`."""
    begin, end = f"<!-- options:{marker} -->", f"<!-- /options:{marker} -->"
    if begin not in text or end not in text:
        raise SystemExit(f"error: no {begin} ... {end} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}{end}{tail}"


def updated_docs() -> dict[Path, tuple[str, str]]:
    """Each doc file: (its current text, the text with every generated section rewritten)."""
    docs: dict[Path, tuple[str, str]] = {}
    for (name, marker), body in sections().items():
        path = ROOT / name
        old = docs[path][0] if path in docs else path.read_text(encoding="utf-8")
        new = docs[path][1] if path in docs else old
        docs[path] = (old, render(new, marker, body))
    return docs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only report docs that differ; exit 1 if any")
    args = p.parse_args(argv)
    stale = []
    for path, (old, new) in updated_docs().items():
        if old != new:
            stale.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    for path in stale:
        print(f"{path.relative_to(ROOT)}: {'out of date' if args.check else 'rewritten'}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())

"""Every tool (networks/*.py, tools/*.py) parses its command line from its declarations in library/options: a
misspelled option gets the closest one and the tool's one-line usage, exit 2, before anything heavy loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from library.errors import ToolkitError
from library.options.tools import TOOLS, parse_tool_args

ROOT = Path(__file__).resolve().parent.parent


def _misspelled(name: str) -> str:
    """`name` with two letters in its middle swapped (`new_rank` -> `new_rnak`-like)."""
    i = len(name) // 2
    return name[:i - 1] + name[i] + name[i - 1] + name[i + 1:]


def _typo_argv(tool_name: str) -> tuple[list[str], str]:
    """A command line of the tool with one misspelled option, and the option it should suggest."""
    options = TOOLS[tool_name].options()
    argv = [f"x{i}" for i, o in enumerate(options) if o.positional and o.name != "loras"]
    argv += ["lora.safetensors"] if any(o.name == "loras" for o in options) else []
    for o in options:
        if o.required:
            argv += [f"--{o.name}", "x.safetensors" if o.choices is None else o.choices[0]]
    target = next(o for o in reversed(options) if not (o.positional or o.required or o.nargs == "count"))
    typo = _misspelled(target.name)
    assert typo != target.name
    return [*argv, f"--{typo}", "1"], target.name


def test_every_tool_script_is_declared():
    scripts = {t.script for t in TOOLS.values()}
    for path in [*ROOT.glob("networks/*.py"), *ROOT.glob("tools/*.py"), *ROOT.glob("finetune/*.py")]:
        text = path.read_text(encoding="utf-8")
        if "__main__" in text and "parse_tool_args" in text:
            assert path.relative_to(ROOT).as_posix() in scripts
    assert len(scripts) == 13 and all((ROOT / s).is_file() for s in scripts)


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_misspelled_option_names_the_closest_one_and_the_usage(name):
    """Run as a user does: one line, the closest option, the one-line usage, exit 2, no torch needed."""
    tool = TOOLS[name]
    argv, target = _typo_argv(name)
    code = ("import runpy, sys; sys.argv = sys.argv[1:]\n"
            "try: runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit as e: print('exit', e.code, [m for m in ('torch', 'diffusers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code, tool.script, *argv], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    typo = argv[-2]
    assert out.stdout.strip() == "exit 2 []", (out.stdout, out.stderr)
    assert out.stderr == f"error: unknown option {typo} (did you mean --{target}?); usage: {tool.usage()}\n"


def test_typo_wins_over_missing_arguments_and_values_stay_values():
    """The typo is named even when required arguments are missing; negative numbers and prompt-like words are
    values, and unambiguous abbreviations keep working where argparse always allowed them."""
    with pytest.raises(ToolkitError, match=r"unknown option --tto \(did you mean --to\?\)"):
        parse_tool_args("convert_lora", ["--tto", "kohya", "in.safetensors"])
    args = parse_tool_args("merge_lora", ["--save_to", "o.safetensors", "--models", "a", "b", "--ratio", "-1", "-.5"])
    assert args.ratios == [-1.0, -0.5] and args.models == ["a", "b"]
    with pytest.raises(ToolkitError, match="unknown option --new_rnk .*usage: resize_lora.py --model PATH"):
        parse_tool_args("resize_lora", ["--model", "a", "--save_to", "b", "--new_rnk", "3"])
    with pytest.raises(ToolkitError, match=r"^the following arguments are required: --save_to$"):
        parse_tool_args("svd_merge_lora", ["--models", "a"])


def test_declared_defaults_reach_the_namespace():
    args = parse_tool_args("resize_lora_aware", ["base.safetensors", "a.safetensors", "b.safetensors", "-vv"])
    assert args.loras == ["a.safetensors", "b.safetensors"] and args.output_dtype == "16" and args.verbosity == 2
    assert args.score_recipes == "fro_ckpt=1,thr=-3.5" and isinstance(args.checkpoint, Path)
    args = parse_tool_args("check_lora_weights", ["f.safetensors", "-s"])
    assert args.show_all is True and args.file == "f.safetensors"
    args = parse_tool_args("extract_lora_from_dylora", ["--model", "d", "--save_to", "o", "--alpha", "keep"])
    assert args.alpha == "keep" and args.unit is None

"""Prompt files and per-line options, shared by gen_img_diffusers.py and the trainer's sample images.

A prompt line is split on `" --"`: the first piece is the prompt, each further piece is an option
(case-insensitive): `--n` negative prompt, `--w`/`--h` size, `--s` steps (1..1000), `--l` CFG scale,
`--d` seed (a comma list gives one seed per image), `--ss` sampler, `--t` img2img strength,
`--am` network multipliers (comma list). sd-scripts' options not used here are warned about and kept in
`extra`; an unknown option or a value out of range stops with the file and line.
Files: `.txt` (one prompt per line, blank lines and `#` comments skipped), `.toml` (a `[prompt]` table of
defaults with `[[prompt.subset]]` entries) and `.json` (a list of strings or of dicts).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import toml

from library.errors import ToolkitError

log = logging.getLogger(__name__)

MAX_STEPS = 1000


@dataclass
class PromptSpec:
    """One prompt and the options given with it; None means "use the command line's default"."""

    prompt: str
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    scale: float | None = None
    seeds: list[int] = field(default_factory=list)
    sampler: str | None = None
    strength: float | None = None
    network_muls: list[float] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def seed(self) -> int | None:
        """The first (for training samples: the only) seed given, or None."""
        return self.seeds[0] if self.seeds else None


# sd-scripts' prompt options this toolkit does not use: accepted with a warning so their prompt files still work
IGNORED_OPTIONS = {"nl": "negative scale", "c": "CLIP prompt", "f": "file name", "i": "image index",
                   "ow": "original width", "oh": "original height", "nw": "negative width", "nh": "negative height",
                   "ct": "crop top", "cl": "crop left", "glt": "guidance limit", "gr": "guidance rescale",
                   "lbw": "block weights", "fd": "flux distillation", "cn": "ControlNet"}


def _int(value: str, low: int = 0, high: int | None = None) -> int:
    n = int(value)
    if n < low or (high is not None and n > high):
        raise ValueError(f"must be {'between ' + str(low) + ' and ' + str(high) if high is not None else f'at least {low}'}")
    return n


def _real(value: str, low: float | None = None, high: float | None = None) -> float:
    x = float(value)
    if not math.isfinite(x):
        raise ValueError("must be a finite number")
    if (low is not None and x < low) or (high is not None and x > high):
        raise ValueError(f"must be between {low:g} and {high:g}" if high is not None else f"must be at least {low:g}")
    return x


def _set_option(spec: PromptSpec, key: str, value: str) -> None:
    """Set one `--key value` on `spec`; ValueError (in the user's words) for a value it cannot take."""
    if key == "n":
        spec.negative_prompt = value
    elif key == "w":
        spec.width = _int(value, 8)
    elif key == "h":
        spec.height = _int(value, 8)
    elif key == "s":
        spec.steps = _int(value, 1, MAX_STEPS)
    elif key == "l":
        spec.scale = _real(value)
    elif key == "d":
        spec.seeds = [_int(v) for v in value.split(",") if v.strip()]
    elif key == "ss":
        spec.sampler = value.strip().lower()
    elif key == "t":
        spec.strength = _real(value, 0.0, 1.0)
    elif key == "am":
        spec.network_muls = [_real(v) for v in value.split(",") if v.strip()]
    elif key in IGNORED_OPTIONS:
        spec.extra[key] = value
        log.warning("prompt option --%s (%s) is not used here; ignored", key, IGNORED_OPTIONS[key])
    else:
        raise ValueError("unknown prompt option (use --n, --w, --h, --s, --l, --d, --ss, --t or --am)")


def parse_prompt_line(line: str, where: str = "prompt") -> PromptSpec:
    """`a cat --n blurry --w 768 --d 42` -> PromptSpec. A bad option or value stops with one line naming `where`
    (the file and line number, or the command-line option) and the option."""
    pieces = line.strip().split(" --")
    spec = PromptSpec(prompt=pieces[0].strip())
    for piece in pieces[1:]:
        m = re.match(r"\s*([A-Za-z]+)(?:\s+(.*))?$", piece, re.DOTALL)
        if not m:
            raise ToolkitError(f"{where}: prompt option --{piece.strip()[:40]} not understood (options are --key value)")
        key, value = m.group(1).lower(), (m.group(2) or "").strip()
        try:
            _set_option(spec, key, value)
        except ValueError as e:
            problem = str(e) if str(e).startswith(("must", "unknown")) else "not a number"
            raise ToolkitError(f"{where}: prompt option --{key} {value[:40]!r}: {problem}") from None
    return spec


# keys of the dict form used by sd-scripts' .toml/.json sample prompt files
_DICT_KEYS = {"prompt": "prompt", "negative_prompt": "negative_prompt", "width": "width", "height": "height",
              "sample_steps": "steps", "steps": "steps", "scale": "scale", "sample_sampler": "sampler",
              "sampler": "sampler", "strength": "strength"}


def prompt_from_dict(d: Mapping, where: str = "prompt file") -> PromptSpec:
    """A dict entry of a .toml/.json prompt file -> PromptSpec (`sample_steps`, `seed`, `sample_sampler`, ...)."""
    if "prompt" not in d:
        raise ToolkitError(f"{where}: an entry has no 'prompt' key ({dict(d)})")
    spec = PromptSpec(prompt=str(d["prompt"]))
    try:
        for key, value in d.items():
            attr = _DICT_KEYS.get(key)
            if key == "seed":
                spec.seeds = [int(value)] if value is not None else []
            elif key == "subset":
                continue
            elif attr in ("width", "height", "steps"):
                setattr(spec, attr, int(value))
            elif attr in ("scale", "strength"):
                setattr(spec, attr, float(value))
            elif attr:
                setattr(spec, attr, value)
            else:
                spec.extra[key] = str(value)
    except (TypeError, ValueError) as e:
        raise ToolkitError(f"{where}: bad value in prompt entry {dict(d)} ({e})") from None
    if spec.steps is not None:
        spec.steps = max(1, min(MAX_STEPS, spec.steps))
    if spec.sampler:
        spec.sampler = spec.sampler.lower()
    return spec


def read_prompt_lines(path: str | Path) -> list[tuple[int, str]]:
    """(line number, line) of the prompts of a text file: blank lines and lines starting with `#` are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ToolkitError(f"{path}: prompt file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ToolkitError(f"{path}: cannot read prompt file ({e})") from None
    return [(i, line) for i, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def load_prompt_file(path: str | Path) -> list[PromptSpec]:
    """Read a .txt, .toml or .json prompt file into PromptSpecs (a ToolkitError names the file on any fault)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        return [parse_prompt_line(line, f"{path}: line {i}") for i, line in read_prompt_lines(path)]
    if not path.is_file():
        raise ToolkitError(f"{path}: prompt file not found")
    try:
        if suffix == ".toml":
            data = toml.loads(path.read_text(encoding="utf-8"))
            table = data.get("prompt")
            if not isinstance(table, dict) or not isinstance(table.get("subset"), list):
                raise ToolkitError(f"{path}: expected a [prompt] table with [[prompt.subset]] entries")
            defaults = {k: v for k, v in table.items() if k != "subset"}
            entries = [{**defaults, **subset} for subset in table["subset"]]
        else:
            entries = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(entries, list):
                raise ToolkitError(f"{path}: expected a JSON list of prompts (strings or objects)")
    except (toml.TomlDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ToolkitError(f"{path}: cannot parse prompt file ({e})") from None
    specs = []
    for i, entry in enumerate(entries, 1):
        if isinstance(entry, str):
            specs.append(parse_prompt_line(entry, f"{path}: prompt {i}"))
        elif isinstance(entry, dict):
            specs.append(prompt_from_dict(entry, str(path)))
        else:
            raise ToolkitError(f"{path}: prompt entries must be strings or objects, got {entry!r}")
    return specs

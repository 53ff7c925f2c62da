"""The Generate tab's command line: gen_img_diffusers.py's options from the form, the LoRA list (one file and
multiplier per line) turned into `--network_*` options, the check of the whole line before anything starts, and
the written images with the parameters stored in them. No gradio here."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from library.errors import ToolkitError
from library.options.generate import GEN_EXCLUSIVE, build_gen_parser, gen_options
from library.options.parse import check_values
from library.options.spec import GEN

GEN_SCRIPT = "gen_img_diffusers.py"
# options shown at the top of the tab, in this order; the others sit in the folded groups below
MAIN_OPTIONS = ("ckpt", "prompt", "negative_prompt", "W", "H", "steps", "sampler", "scale", "seed",
                "images_per_prompt", "strength")
# set by the tab itself: the LoRA list gives the network files and multipliers, the UI chooses the output folder
# (so it can show the images) and the img2img upload gives image_path
SET_BY_TAB = ("network_weights", "network_mul", "outdir", "image_path")
DEFAULT_MODULE = "networks.lora"
DEFAULT_MODEL = "default/sd1-shapes-64.safetensors"
# the embedded default model's own settings (64 px, guidance 4), so Generate works at once
DEFAULT_VALUES = {"ckpt": DEFAULT_MODEL, "prompt": "sks on a blue background", "W": "64", "H": "64", "steps": "20",
                  "sampler": "euler_a", "scale": "4", "seed": "1"}
_counter = itertools.count(1)


def parse_lora_lines(text: str) -> list[tuple[str, float]]:
    """`file [multiplier]` per line (blank lines and `#` comments skipped); the multiplier defaults to 1."""
    out = []
    for number, raw in enumerate((text or "").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path, _, last = line.rpartition(" ")
        try:
            mul = float(last) if path else 1.0
        except ValueError:
            path, mul = "", 1.0
        path = path.strip() if path.strip() else line
        if mul != mul or mul in (float("inf"), float("-inf")):
            raise ToolkitError(f"LoRAs line {number}: multiplier {last}: must be a finite number")
        out.append((path, mul))
    return out


def lora_argv(loras: list[tuple[str, float]], module_given: bool) -> list[str]:
    """The `--network_*` words of a LoRA list (one module for all files unless the form names modules)."""
    if not loras:
        return []
    module = [] if module_given else ["--network_module", DEFAULT_MODULE]
    return [*module, "--network_weights", *(p for p, _ in loras), "--network_mul", *(f"{m:g}" for _, m in loras)]


def check_generation_argv(argv: list[str]) -> dict:
    """gen_img_diffusers.py's option values of `argv`, checked as the script checks them (nothing set up)."""
    values = vars(build_gen_parser().parse_args(argv))
    if not values["ckpt"]:
        raise ToolkitError("--ckpt is required (a .safetensors/.ckpt checkpoint or a Diffusers folder)")
    check_values(gen_options(), values, GEN, GEN_EXCLUSIVE)
    return values


def new_outdir(folder: Path) -> Path:
    """A fresh folder for one Generate click, under the UI's own (served) generate folder."""
    return folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{next(_counter):03d}"


def image_parameters(path: Path) -> str:
    """The A1111-style `parameters` text the generator stores in each PNG (prompt, steps, sampler, seed, ...)."""
    from PIL import Image

    with Image.open(path) as im:
        text = dict(getattr(im, "text", {}) or {})
    params = text.get("parameters", "")
    if text.get("networks"):
        params += f"\nLoRAs: {text['networks']}"
    if text.get("network-muls"):
        params += f"\nper-prompt multipliers: {text['network-muls']}"
    return params

"""Generate images (txt2img, img2img) from an SD1/SD2/SDXL checkpoint, optionally with LoRA networks.

Example:
  python gen_img_diffusers.py --ckpt model.safetensors --outdir out --prompt "a cat --n blurry --d 42" \\
      --steps 20 --sampler euler_a --network_module networks.lora --network_weights my_lora.safetensors

Every option is declared in library/options/generate.py; `-h` lists them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

# bitsandbytes (imported by Diffusers) warns at import time about an optional CPU kernel package
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from library.cli import run_main  # noqa: E402
from library.options.parse import build_parser as _build_parser  # noqa: E402
from library.options.parse import parse_generation_args  # noqa: E402
from library.options.parser import OptionParser  # noqa: E402

SCRIPT = "gen_img_diffusers"


def build_parser() -> OptionParser:
    """This script's parser (built from the declarations in library/options/generate.py)."""
    return _build_parser(SCRIPT)


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Parse the command line and generate; returns the written images."""
    config = parse_generation_args(argv)
    from library.generate import generate  # heavy: only once the work starts

    return generate(config)


if __name__ == "__main__":
    sys.exit(run_main(main))

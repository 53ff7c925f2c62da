"""Merge LoRAs into an SDXL checkpoint (te1, te2, U-Net), or merge SDXL LoRAs into one LoRA (no --sd_model).

    python networks/sdxl_merge_lora.py --sd_model sdxl.safetensors --save_to merged.safetensors \
        --models a.safetensors --ratios 0.8

Same options and code as merge_lora.py (without --v2); --lbws takes lists of 12 or 20 block weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import run_main  # noqa: E402
from networks.merge_lora import build_parser, run  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(sdxl=True)
    parser.description = (__doc__ or "").split("\n")[0]
    run(parser.parse_args(argv), sdxl=True)


if __name__ == "__main__":
    sys.exit(run_main(main))

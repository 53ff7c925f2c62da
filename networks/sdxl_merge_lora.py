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
from library.options.tools import parse_tool_args  # noqa: E402
from networks.merge_lora import run  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    run(parse_tool_args("sdxl_merge_lora", argv), sdxl=True)


if __name__ == "__main__":
    sys.exit(run_main(main))

"""Split a DyLoRA file into ordinary LoRA files, one per rank step below its full rank.

    python networks/extract_lora_from_dylora.py --model dylora.safetensors --save_to out/my.safetensors --unit 4

A dim-16, unit-4 file gives my-0004, my-0008 and my-0012 (the rank-16 file is the input). Works on files
without metadata (.ckpt/.pt); `--unit` defaults to the unit recorded in the file's `ss_network_args`.
Files trained by this project's networks.dylora get alpha·r/dim per split (exactly the rank-r LoRA training
optimised); other files keep alpha, as sd-scripts does (`--alpha keep|scale` overrides).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import run_main  # noqa: E402
from library.options.tools import parse_tool_args  # noqa: E402


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_tool_args("extract_lora_from_dylora", argv)
    from library.dylora_split import split_file

    return split_file(args.model, args.save_to, args.unit, args.alpha)


if __name__ == "__main__":
    sys.exit(run_main(main))

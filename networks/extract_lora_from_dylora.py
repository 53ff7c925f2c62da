"""Split a DyLoRA file into ordinary LoRA files, one per rank step below its full rank.

    python networks/extract_lora_from_dylora.py --model dylora.safetensors --save_to out/my.safetensors --unit 4

A dim-16, unit-4 file gives my-0004, my-0008 and my-0012 (the rank-16 file is the input). Works on files
without metadata (.ckpt/.pt); `--unit` defaults to the unit recorded in the file's `ss_network_args`.
Files trained by this project's networks.dylora get alpha·r/dim per split (exactly the rank-r LoRA training
optimised); other files keep alpha, as sd-scripts does (`--alpha keep|scale` overrides).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import add_verbosity, run_main, setup_logging  # noqa: E402


def setup_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Split a DyLoRA file into one LoRA per rank step.")
    parser.add_argument("--model", required=True, help="DyLoRA file (.safetensors, .ckpt, .pt)")
    parser.add_argument("--save_to", required=True,
                        help="base output name; each rank r is written to <stem>-{r:04d}<ext> (.safetensors if none)")
    parser.add_argument("--unit", type=int, default=None,
                        help="rank step used in training (default: the unit in the file's metadata)")
    parser.add_argument("--alpha", dest="alpha_mode", choices=("auto", "keep", "scale"), default="auto",
                        help="alpha of each split: 'scale' = alpha*r/dim (files trained here, marked "
                             "ss_dylora_rank_scale=constant), 'keep' = unchanged (sd-scripts' DyLoRA); "
                             "'auto' (default) picks by that mark")
    add_verbosity(parser)
    return parser


def main(argv: list[str] | None = None) -> list[Path]:
    args = setup_parser().parse_args(argv)
    setup_logging(args.verbosity)
    from library.dylora_split import split_file

    return split_file(args.model, args.save_to, args.unit, args.alpha_mode)


if __name__ == "__main__":
    sys.exit(run_main(main))

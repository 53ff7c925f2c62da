"""Merge any number of LoRAs (any ranks and alphas) into one LoRA of a chosen rank.

    python networks/svd_merge_lora.py --save_to merged.safetensors --models a.safetensors b.safetensors \
        --ratios 0.7 0.5 --new_rank 32 --new_conv_rank 16

Per module the result is the best rank-k approximation of Σ ratio·(alpha/rank)·up@down (Eckart-Young),
computed from the stacked factors: the full out x in change is never formed while the summed rank is smaller.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import add_verbosity, run_main, setup_logging, str_to_dtype  # noqa: E402

log = logging.getLogger("svd_merge_lora")
PRECISIONS = ["float", "fp16", "bf16"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--save_precision", choices=PRECISIONS, default=None,
                        help="dtype written (default: same as --precision)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float",
                        help="dtype the inputs are read in [float]; the SVD itself always runs in float32")
    parser.add_argument("--save_to", required=True, help="output file (.safetensors, or .ckpt/.pt for torch.save)")
    parser.add_argument("--models", nargs="*", default=[], help="LoRA files")
    parser.add_argument("--ratios", nargs="*", type=float, default=None, help="one ratio per model (default 1.0)")
    parser.add_argument("--lbws", nargs="*", default=None,
                        help="per-model block weights, one JSON list per model (17/26 values SD, 12/20 SDXL)")
    parser.add_argument("--new_rank", type=int, default=4, help="rank for Linear and 1x1 conv modules [4]")
    parser.add_argument("--new_conv_rank", type=int, default=None,
                        help="rank for 3x3 conv modules (default: --new_rank)")
    parser.add_argument("--device", default=None, help="device for the SVD, e.g. cuda (default cpu)")
    parser.add_argument("--clamp_quantile", type=float, default=None,
                        help="clamp the factors to this quantile of their values (sd-scripts always uses 0.99); "
                             "default: no clamping, so the result stays the best approximation")
    parser.add_argument("--no_metadata", action="store_true",
                        help="write no modelspec metadata (the minimum ss_* set and hashes are kept)")
    add_verbosity(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbosity)
    from library.files import check_output_file
    from library.lora_io import modules_to_state_dict, save_lora
    from library.lora_merge import merged_lora_metadata, svd_merge
    from library.lora_sources import open_sources

    dtype = str_to_dtype(args.precision)
    save_dtype = str_to_dtype(args.save_precision, dtype)
    check_output_file(args.save_to, "--save_to", [("--models", m) for m in args.models], weights=True)
    sources = open_sources(args.models, args.ratios, args.lbws)
    modules = svd_merge(sources, args.new_rank, args.new_conv_rank, args.device, dtype, args.clamp_quantile)
    conv_rank = args.new_conv_rank or args.new_rank
    meta = merged_lora_metadata(sources, modules, args.save_to, args.no_metadata, dim=str(args.new_rank),
                                alpha=str(float(args.new_rank)),
                                network_args=json.dumps({"conv_dim": conv_rank, "conv_alpha": conv_rank}))
    save_lora(args.save_to, modules_to_state_dict(modules), meta, save_dtype)
    log.info("saved %s (%d modules, rank %d, conv rank %d)", args.save_to, len(modules), args.new_rank, conv_rank)


if __name__ == "__main__":
    sys.exit(run_main(main))

"""Merge any number of LoRAs (any ranks and alphas) into one LoRA of a chosen rank.

    python networks/svd_merge_lora.py --save_to merged.safetensors --models a.safetensors b.safetensors \
        --ratios 0.7 0.5 --new_rank 32 --new_conv_rank 16

Inputs may be LoRA/LoCon, LoHa, LoKr, full diffs or DoRA (which needs the base model, --sd_model). Per module
the result is the best rank-k approximation of Σ ratio·ΔW (Eckart-Young), computed from exact stacked factors
(LoHa and LoKr have low-rank forms too): the full out x in change is formed only when the summed rank is larger.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import run_main, str_to_dtype  # noqa: E402
from library.options.tools import parse_tool_args  # noqa: E402

log = logging.getLogger("svd_merge_lora")


def main(argv: list[str] | None = None) -> None:
    args = parse_tool_args("svd_merge_lora", argv)
    from library.files import check_output_file
    from library.lora_io import modules_to_state_dict, save_lora
    from library.lora_merge import merged_lora_metadata, svd_merge
    from library.lora_sources import open_sources

    dtype = str_to_dtype(args.precision)
    save_dtype = str_to_dtype(args.save_precision, dtype)
    from library.merge import BaseWeights

    check_output_file(args.save_to, "--save_to", [("--models", m) for m in args.models] +
                      ([("--sd_model", args.sd_model)] if args.sd_model else []), weights=True)
    sources = open_sources(args.models, args.ratios, args.lbws)
    base = BaseWeights(args.sd_model) if args.sd_model else None
    modules = svd_merge(sources, args.new_rank, args.new_conv_rank, args.device, dtype, args.clamp_quantile, base)
    conv_rank = args.new_conv_rank or args.new_rank
    meta = merged_lora_metadata(sources, modules, args.save_to, args.no_metadata, dim=str(args.new_rank),
                                alpha=str(float(args.new_rank)),
                                network_args=json.dumps({"conv_dim": conv_rank, "conv_alpha": conv_rank}))
    save_lora(args.save_to, modules_to_state_dict(modules), meta, save_dtype)
    log.info("saved %s (%d modules, rank %d, conv rank %d)", args.save_to, len(modules), args.new_rank, conv_rank)


if __name__ == "__main__":
    sys.exit(run_main(main))

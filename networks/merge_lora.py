"""Merge LoRAs into an SD1.x/SD2.x checkpoint, or merge LoRAs into one LoRA (no --sd_model).

    python networks/merge_lora.py --sd_model base.safetensors --save_to merged.safetensors \
        --models a.safetensors b.safetensors --ratios 0.8 0.5
    python networks/merge_lora.py --save_to ab.safetensors --models a.safetensors b.safetensors --ratios 1 1 --concat

Merging into a checkpoint streams the file (peak memory about one tensor plus the LoRAs' current module).
LoRA + LoRA: --concat is exact (ranks add up); the default factor-wise sum is sd-scripts' and is exact only for
one input; svd_merge_lora.py merges any ranks into a chosen rank.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import run_main, str_to_dtype  # noqa: E402
from library.options.tools import parse_tool_args  # noqa: E402

log = logging.getLogger("merge_lora")


def run(args: argparse.Namespace, sdxl: bool) -> None:
    """Shared by merge_lora.py and sdxl_merge_lora.py."""
    from library.files import check_output_file
    from library.lora_io import modules_to_state_dict, save_lora
    from library.lora_merge import merge_loras, merged_lora_metadata
    from library.lora_sources import open_sources
    from library.merge import merge_into_checkpoint

    dtype = str_to_dtype(args.precision)
    save_dtype = str_to_dtype(args.save_precision, dtype)
    check_output_file(args.save_to, "--save_to", [("--sd_model", args.sd_model), *(("--models", m) for m in args.models)],
                      weights=True)
    sources = open_sources(args.models, args.ratios, args.lbws)
    if args.sd_model:
        if args.concat or args.shuffle:
            log.warning("--concat/--shuffle only apply when merging LoRAs together (no --sd_model); ignored")
        family = "sdxl" if sdxl else ("sd2" if args.v2 else None)
        merge_into_checkpoint(args.sd_model, sources, args.save_to, family, dtype, save_dtype, args.no_metadata)
        return
    modules = merge_loras(sources, "concat" if args.concat else "sum", args.shuffle, dtype)
    meta = merged_lora_metadata(sources, modules, args.save_to, args.no_metadata)
    save_lora(args.save_to, modules_to_state_dict(modules), meta, save_dtype)
    log.info("saved %s (%d modules)", args.save_to, len(modules))


def main(argv: list[str] | None = None) -> None:
    run(parse_tool_args("merge_lora", argv), sdxl=False)


if __name__ == "__main__":
    sys.exit(run_main(main))

"""Extract a LoRA from the difference between a fine-tuned checkpoint and its original.

    python networks/extract_lora_from_models.py --model_org base.safetensors --model_tuned tuned.safetensors \
        --save_to extracted.safetensors --dim 32 --conv_dim 16

Both checkpoints are read one weight at a time; each difference is decomposed with a randomized SVD whose
error is within 1% of an exact SVD's. No clamp by default (the faithful truncated SVD); `--clamp_quantile 0.99`
gives sd-scripts' clamped factors. The text encoders are skipped when no weight differs by more than --min_diff.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import run_main, str_to_dtype  # noqa: E402
from library.options.tools import parse_tool_args  # noqa: E402

log = logging.getLogger("extract_lora_from_models")


def main(argv: list[str] | None = None) -> None:
    args = parse_tool_args("extract_lora_from_models", argv)
    from library.extract import extract_lora, extract_metadata
    from library.files import check_output_file
    from library.lora_io import modules_to_state_dict, save_lora

    family = "sdxl" if args.sdxl else ("sd2" if args.v2 else None)
    save_dtype = str_to_dtype(args.save_precision, None)
    check_output_file(args.save_to, "--save_to", [("--model_org", args.model_org), ("--model_tuned", args.model_tuned)],
                      weights=True)
    modules, family = extract_lora(args.model_org, args.model_tuned, args.dim, args.conv_dim, family, args.device,
                                   str_to_dtype(args.load_precision), args.clamp_quantile, args.min_diff)
    v_param = args.v_parameterization if args.v_parameterization is not None else family == "sd2"
    meta = extract_metadata(family, v_param, args.dim, args.conv_dim, args.save_to, args.no_metadata)
    save_lora(args.save_to, modules_to_state_dict(modules), meta, save_dtype)
    log.info("saved %s (%d modules)", args.save_to, len(modules))


if __name__ == "__main__":
    sys.exit(run_main(main))

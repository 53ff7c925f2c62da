"""Extract a LoRA from the difference between a fine-tuned checkpoint and its original.

    python networks/extract_lora_from_models.py --model_org base.safetensors --model_tuned tuned.safetensors \
        --save_to extracted.safetensors --dim 32 --conv_dim 16

Both checkpoints are read one weight at a time; each difference is decomposed with a randomized SVD whose
error is within 1% of an exact SVD's. No clamp by default (the faithful truncated SVD); `--clamp_quantile 0.99`
gives sd-scripts' clamped factors. The text encoders are skipped when no weight differs by more than --min_diff.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import add_verbosity, run_main, setup_logging, str_to_dtype  # noqa: E402
from library.errors import ToolkitError  # noqa: E402

log = logging.getLogger("extract_lora_from_models")
PRECISIONS = ["float", "fp16", "bf16"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--v2", action="store_true", help="SD2.x models (optional: read from the keys)")
    parser.add_argument("--sdxl", action="store_true", help="SDXL models (optional: read from the keys)")
    parser.add_argument("--v_parameterization", action="store_true", default=None,
                        help="metadata: the model predicts v (default: same as --v2)")
    parser.add_argument("--load_precision", choices=PRECISIONS, default=None,
                        help="round the loaded weights to this dtype before taking the difference")
    parser.add_argument("--save_precision", choices=PRECISIONS, default=None, help="dtype written [float]")
    parser.add_argument("--model_org", required=True, help="original checkpoint (.safetensors/.ckpt)")
    parser.add_argument("--model_tuned", required=True, help="fine-tuned checkpoint (.safetensors/.ckpt)")
    parser.add_argument("--save_to", required=True, help="output LoRA file (.safetensors, or .ckpt/.pt)")
    parser.add_argument("--dim", type=int, default=4, help="rank for Linear and 1x1 conv modules [4]")
    parser.add_argument("--conv_dim", type=int, default=None,
                        help="also extract 3x3 convs and ResNet layers (LoCon / C3Lier); rank of the 3x3 convs")
    parser.add_argument("--device", default=None, help="device for the SVD, e.g. cuda (default cpu)")
    parser.add_argument("--clamp_quantile", type=float, default=None,
                        help="clamp the factors to this quantile of their values, as sd-scripts does with 0.99 "
                             "(default: no clamp, the exact truncated SVD)")
    parser.add_argument("--min_diff", type=float, default=0.01,
                        help="text encoders count as changed when a weight differs by more than this [0.01]")
    parser.add_argument("--no_metadata", action="store_true", help="write no modelspec metadata")
    parser.add_argument("--load_original_model_to", default=None,
                        help="accepted for sd-scripts compatibility; unused (the models are streamed)")
    parser.add_argument("--load_tuned_model_to", default=None,
                        help="accepted for sd-scripts compatibility; unused (the models are streamed)")
    add_verbosity(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbosity)
    from library.extract import extract_lora, extract_metadata
    from library.files import check_output_file
    from library.lora_io import modules_to_state_dict, save_lora

    if args.v2 and args.sdxl:  # (library.models.family_from_flags would import diffusers: seconds for nothing)
        raise ToolkitError("--v2 and --sdxl cannot be given together")
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

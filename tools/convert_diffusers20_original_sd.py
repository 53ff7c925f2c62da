"""Convert a Stable Diffusion model between a Diffusers folder and a single-file checkpoint, either direction.

    python tools/convert_diffusers20_original_sd.py ../models/my-model ../models/my-model.safetensors --fp16
    python tools/convert_diffusers20_original_sd.py my-model.safetensors ../models/my-model-diffusers

sd-scripts' command line: a path with an extension is a single file (.safetensors/.ckpt), one without is a
Diffusers folder. SD1.x, SD2.x and SDXL; the family and architecture are read from the weights (`--v1`/`--v2`
override the family). Without a precision option every tensor keeps its stored dtype, so a round trip gives
identical tensors. Peak memory is about one model: tensors are read and written one at a time.
"""

from __future__ import annotations

import argparse
import ast
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import add_verbosity, run_main, setup_logging, str_to_dtype  # noqa: E402
from library.errors import ToolkitError  # noqa: E402

log = logging.getLogger("convert_diffusers20_original_sd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--v1", action="store_true", help="the model is SD1.x (optional: read from the weights)")
    parser.add_argument("--v2", action="store_true", help="the model is SD2.x (optional: read from the weights)")
    parser.add_argument("--unet_use_linear_projection", action="store_true",
                        help="accepted for sd-scripts compatibility: the projection type is read from the weights")
    parser.add_argument("--fp16", action="store_true", help="save as fp16")
    parser.add_argument("--bf16", action="store_true", help="save as bf16")
    parser.add_argument("--float", action="store_true", help="save as float32")
    parser.add_argument("--save_precision_as", choices=["fp16", "bf16", "float"], default=None,
                        help="save precision (do not combine with --fp16/--bf16/--float); default: as stored")
    parser.add_argument("--epoch", type=int, default=0, help="epoch written into a .ckpt [0]")
    parser.add_argument("--global_step", type=int, default=0, help="global_step written into a .ckpt [0]")
    parser.add_argument("--metadata", default=None,
                        help="safetensors metadata as a Python/JSON dict, e.g. '{\"name\": \"my model\"}'")
    parser.add_argument("--variant", default=None, help="Diffusers weights variant to load, e.g. fp16")
    parser.add_argument("--reference_model", default=None,
                        help="local Diffusers folder whose scheduler and tokenizers are copied into a Diffusers "
                             "output (a hub name is accepted but nothing is downloaded)")
    parser.add_argument("--use_safetensors", action="store_true",
                        help="accepted for sd-scripts compatibility: Diffusers folders are always written as safetensors")
    parser.add_argument("model_to_load", help="single-file checkpoint or Diffusers folder")
    parser.add_argument("model_to_save", help="checkpoint file (with extension) or Diffusers folder (without)")
    add_verbosity(parser)
    return parser


def save_precision(args: argparse.Namespace):  # noqa: ANN201 - torch.dtype | None
    flags = [name for name in ("fp16", "bf16", "float") if getattr(args, name)]
    if args.save_precision_as:
        flags.append(args.save_precision_as)
    if len(set(flags)) > 1:
        raise ToolkitError(f"--fp16/--bf16/--float/--save_precision_as: conflicting precisions {sorted(set(flags))}")
    return str_to_dtype(flags[0]) if flags else None


def parse_metadata(text: str | None) -> dict[str, str] | None:
    """`--metadata` as a dict literal (read with ast.literal_eval: never executed)."""
    if text is None:
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, dict):
        raise ToolkitError(f"--metadata {text!r}: expected a dict such as '{{\"name\": \"my model\"}}'")
    return {str(k): str(v) for k, v in value.items()}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbosity)
    if args.v1 and args.v2:
        raise ToolkitError("--v1 and --v2 cannot be given together")
    family = "sd1" if args.v1 else ("sd2" if args.v2 else None)
    dtype = save_precision(args)
    metadata = parse_metadata(args.metadata)
    src, dst = Path(args.model_to_load), Path(args.model_to_save)
    if not src.exists():
        raise ToolkitError(f"{src}: not found (give a .safetensors/.ckpt file or a Diffusers folder)")
    from library.files import check_output_file, check_output_folder, read_metadata
    from library.models import is_diffusers_dir, is_single_file_path, load_models, save_models

    if src.is_dir() and not is_diffusers_dir(src):
        raise ToolkitError(f"{src}: a folder, but not a Diffusers model (no unet/ subfolder)")
    to_file = is_single_file_path(dst)
    (check_output_file if to_file else check_output_folder)(dst, "model_to_save", [("model_to_load", src)])
    reference = args.reference_model
    if reference is not None and not (to_file or is_diffusers_dir(reference)):
        log.warning("--reference_model %s is not a local Diffusers folder; nothing is downloaded: the shipped "
                    "tokenizers and the default scheduler are written", reference)
        reference = None
    v_param = src.is_file() and read_metadata(src).get("modelspec.prediction_type") == "v"
    log.info("loading %s: %s", "Diffusers folder" if src.is_dir() else "checkpoint", src)
    bundle = load_models(src, family, v_param, dtype=dtype, variant=args.variant, progress=True)
    if to_file and bundle.v_parameterization and dst.suffix.lower() == ".safetensors":
        metadata = {"modelspec.prediction_type": "v", **(metadata or {})}
    log.info("%s model; saving as %s: %s", bundle.family, "checkpoint" if to_file else "Diffusers folder", dst)
    save_models(bundle, dst, None, metadata, args.epoch, args.global_step, reference)
    log.info("saved %s", dst)


if __name__ == "__main__":
    sys.exit(run_main(main))

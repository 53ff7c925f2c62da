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

from library.cli import run_main, str_to_dtype  # noqa: E402
from library.errors import ToolkitError  # noqa: E402
from library.options.tools import parse_tool_args  # noqa: E402

log = logging.getLogger("convert_diffusers20_original_sd")


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
    args = parse_tool_args("convert_diffusers20_original_sd", argv)
    family = "sd1" if args.v1 else ("sd2" if args.v2 else None)
    dtype = save_precision(args)
    metadata = parse_metadata(args.metadata)
    src, dst = Path(args.model_to_load), Path(args.model_to_save)
    if not src.exists():
        raise ToolkitError(f"{src}: not found (give a .safetensors/.ckpt file or a Diffusers folder)")
    from library.files import check_output_file, check_output_folder, read_metadata
    from library.finite import NarrowingError
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
    try:
        bundle = load_models(src, family, v_param, dtype=dtype, variant=args.variant, progress=True)
    except NarrowingError as e:  # the precision asked for the output cannot hold the model
        raise ToolkitError(f"{dst}: {e.key} exceeds the {e.dtype_name} range "
                           f"(max |x| = {e.top:.6g}); save as bf16 or fp32 (nothing written)") from None
    if to_file and bundle.v_parameterization and dst.suffix.lower() == ".safetensors":
        metadata = {"modelspec.prediction_type": "v", **(metadata or {})}
    log.info("%s model; saving as %s: %s", bundle.family, "checkpoint" if to_file else "Diffusers folder", dst)
    save_models(bundle, dst, None, metadata, args.epoch, args.global_step, reference)
    log.info("saved %s", dst)


if __name__ == "__main__":
    sys.exit(run_main(main))

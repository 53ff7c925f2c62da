"""Reduce the rank of LoRA files, in either of two forms.

sd-scripts form (same options and results as kohya's networks/resize_lora.py):
    python networks/resize_lora.py --model IN.safetensors --save_to OUT.safetensors --new_rank 8
        [--new_conv_rank N] [--dynamic_method sv_ratio|sv_fro|sv_cumulative --dynamic_param P]
        [--save_precision float|fp16|bf16] [--device cuda] [--verbose] [--report OUT.png]

Base-model-aware form (ranks chosen per direction against the checkpoint the LoRA was trained on):
    python networks/resize_lora.py CHECKPOINT LORA [LORA ...] -o FOLDER [-t 16|32] [-d DEVICE]
        [-r "fro_ckpt=1,thr=-3.5:spn_ckpt=1,size=20"] [--report OUT.png] [-v|-vv]

See docs/resize_lora.md for the recipes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import run_main, setup_logging, str_to_dtype  # noqa: E402
from library.options.choices import DYNAMIC_METHODS  # noqa: E402
from library.resize.recipe import DEFAULT_RECIPES, parse_recipes  # noqa: E402

log = logging.getLogger("resize_lora")
KOHYA_OPTIONS = ("--model", "--save_to", "--new_rank", "--new_conv_rank", "--dynamic_method", "--dynamic_param",
                 "--save_precision", "--svd_lowrank_niter")


def kohya_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resize_lora.py", allow_abbrev=False,
                                description="sd-scripts form: resize one LoRA to a fixed or dynamic rank.")
    p.add_argument("--model", required=True, help="LoRA to resize (.safetensors, .ckpt, .pt)")
    p.add_argument("--save_to", required=True, help="output file (.safetensors, .ckpt, .pt or .pth)")
    p.add_argument("--new_rank", type=int, default=4, help="rank of Linear modules; cap for dynamic methods [4]")
    p.add_argument("--new_conv_rank", type=int, default=None,
                   help="rank of conv modules (1x1 and 3x3) [same as --new_rank]")
    p.add_argument("--dynamic_method", choices=DYNAMIC_METHODS, default=None,
                   help="choose each module's rank from its singular values (capped by --new_rank)")
    p.add_argument("--dynamic_param", type=float, default=None,
                   help="sv_ratio: max σ0/σk ratio; sv_fro: Frobenius share kept; sv_cumulative: Σσ share kept")
    p.add_argument("--save_precision", choices=["float", "fp16", "bf16"], default=None,
                   help="dtype written [float]")
    p.add_argument("--device", default=None, help="device for the SVD, e.g. cuda [cpu]")
    p.add_argument("--verbose", action="store_true", help="print one line per module and the mean retention")
    p.add_argument("--svd_lowrank_niter", type=int, default=None,
                   help="accepted for compatibility; ignored (the decomposition here is always exact)")
    p.add_argument("--report", type=Path, default=None, help="write each module's spectrum with the cut to a PNG")
    p.add_argument("-v", "--verbose_log", dest="verbosity", action="count", default=0, help="debug logging")
    return p


def aware_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="resize_lora.py", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Base-model-aware form: keep each LoRA direction whose score against the base checkpoint "
                    "passes the recipe. The sd-scripts form (--model/--save_to/--new_rank ...) is also accepted; "
                    "run `resize_lora.py --model x -h` for its options.",
        epilog="recipes: comma lists of score weights (spn_ckpt, spn_lora, fro_ckpt, fro_lora, subspace, params; "
               "normalised to sum 1),\none selector (thr=<log10> or size=<MiB>) and optional rescale=<factor>; "
               "separate several recipes with ':'.\nLORA may be a wildcard or a weighted merge 'a.safetensors:0.7,"
               "b.safetensors:0.3'.\nOutputs: <lora>_<recipe>_th<threshold>.safetensors. See docs/resize_lora.md.")
    p.add_argument("checkpoint", type=Path, help="base model the LoRA was trained on (single-file .safetensors/.ckpt)")
    p.add_argument("loras", nargs="+", help="LoRA files, wildcards, or merges a.safetensors:0.7,b.safetensors:0.3")
    p.add_argument("-o", "--output_folder", type=Path, default=None, help="output folder [folder of each LoRA]")
    p.add_argument("-t", "--output_dtype", choices=["16", "32"], default="16", help="float16 or float32 output [16]")
    p.add_argument("-d", "--device", default=None, help="compute device [cuda if available, else cpu]")
    p.add_argument("-r", "--score_recipes", default=DEFAULT_RECIPES, help=f"recipes separated by ':' [{DEFAULT_RECIPES}]")
    p.add_argument("--report", type=Path, default=None,
                   help="PNG of every layer's scores with the kept directions and the threshold "
                        "(one per output: FILE_<lora>_<recipe>.png when there are several)")
    p.add_argument("--cache_dir", type=Path, default=None,
                   help="folder of the base-norms cache [$LORA_TOOLKIT_CACHE/norms or ~/.cache/sd-lora-toolkit/norms]")
    p.add_argument("--no_cache", action="store_true", help="neither read nor write the base-norms cache")
    p.add_argument("-v", "--verbose", dest="verbosity", action="count", default=0,
                   help="-v: score quantiles and thresholds; -vv: one line per layer")
    return p


def is_kohya_form(argv: list[str]) -> bool:
    return any(a.split("=", 1)[0] in KOHYA_OPTIONS for a in argv)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_kohya(argv: list[str]) -> None:
    args = kohya_parser().parse_args(argv)
    setup_logging(args.verbosity)
    from library.files import check_output_file
    from library.resize import kohya  # heavy (torch): only once the work starts
    from library.resize.report import Spectrum, draw_report

    settings = kohya.KohyaSettings(args.new_rank, args.new_conv_rank, args.dynamic_method, args.dynamic_param,
                                   args.device)
    check_output_file(args.save_to, "--save_to", [("--model", args.model)], weights=True)
    if args.report:
        check_output_file(args.report, "--report", [("--model", args.model), ("--save_to", args.save_to)])
    result = kohya.resize_file(args.model, args.save_to, settings, str_to_dtype(args.save_precision))
    if args.verbose:
        for line in kohya.verbose_summary(result.reports, bool(args.dynamic_method)):
            print(line)
    if args.report:
        spectra = [Spectrum(r.name, (r.s.double() / r.s[0]).log10().float(), _prefix(r.s.shape[0], r.new_rank))
                   for r in result.reports]
        rule = (f"{args.dynamic_method} {args.dynamic_param}, max rank {args.new_rank}" if args.dynamic_method
                else f"rank {settings.new_rank}, conv rank {settings.conv_rank}")
        draw_report(args.report, Path(args.save_to).name, f"{args.model}: {rule}", spectra, "log10(S/S0)")
        log.info("report %s", args.report)


def _prefix(n: int, k: int):  # noqa: ANN202 - bool tensor
    import torch

    return torch.arange(n) < k


def run_aware(argv: list[str]) -> None:
    args = aware_parser().parse_args(argv)
    setup_logging(1 if args.verbosity >= 2 else 0)
    logging.getLogger("library.resize.details").setLevel(
        logging.DEBUG if args.verbosity >= 2 else logging.INFO if args.verbosity == 1 else logging.WARNING)
    from library.resize import aware  # heavy (torch): only once the work starts

    settings = aware.AwareSettings(
        checkpoint=args.checkpoint, loras=args.loras, recipes=parse_recipes(args.score_recipes),
        output_folder=args.output_folder, dtype=str_to_dtype("fp16" if args.output_dtype == "16" else "float"),
        device=args.device or _default_device(), report=args.report, cache_dir=args.cache_dir,
        use_cache=not args.no_cache)
    aware.run(settings)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if is_kohya_form(argv):
        run_kohya(argv)
    else:
        run_aware(argv)


if __name__ == "__main__":
    sys.exit(run_main(main))

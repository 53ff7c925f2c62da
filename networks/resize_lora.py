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

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import run_main, str_to_dtype  # noqa: E402
from library.options.tools import parse_tool_args  # noqa: E402
from library.resize.recipe import parse_recipes  # noqa: E402

log = logging.getLogger("resize_lora")
KOHYA_OPTIONS = ("--model", "--save_to", "--new_rank", "--new_conv_rank", "--dynamic_method", "--dynamic_param",
                 "--save_precision", "--svd_lowrank_niter", "--sd_model")


def is_kohya_form(argv: list[str]) -> bool:
    return any(a.split("=", 1)[0] in KOHYA_OPTIONS for a in argv)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_kohya(argv: list[str]) -> None:
    args = parse_tool_args("resize_lora", argv)
    from library.files import check_output_file
    from library.resize import kohya  # heavy (torch): only once the work starts
    from library.resize.report import Spectrum, draw_report

    settings = kohya.KohyaSettings(args.new_rank, args.new_conv_rank, args.dynamic_method, args.dynamic_param,
                                   args.device)
    check_output_file(args.save_to, "--save_to", [("--model", args.model)] +
                      ([("--sd_model", args.sd_model)] if args.sd_model else []), weights=True)
    if args.report:
        check_output_file(args.report, "--report", [("--model", args.model), ("--save_to", args.save_to)])
    result = kohya.resize_file(args.model, args.save_to, settings, str_to_dtype(args.save_precision), args.sd_model)
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
    args = parse_tool_args("resize_lora_aware", argv, log_verbosity=lambda v: 1 if v >= 2 else 0)
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

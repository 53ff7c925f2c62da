"""Show each LoRA module's rank, alpha and norms, and flag all-zero and NaN/Inf tensors.

    python networks/check_lora_weights.py FILE [--show_all]

Exit status 1 when a tensor holds NaN/Inf, so scripts can gate on it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import run_main  # noqa: E402
from library.options.tools import parse_tool_args  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = parse_tool_args("check_lora_weights", argv)
    from library.lora_check import check_state_dict
    from library.lora_io import load_lora

    sd, meta = load_lora(args.file, check_finite=False)  # reporting NaN/Inf is this tool's job
    reports, other = check_state_dict(sd, args.file)
    print(f"file: {args.file}")
    print(f"number of LoRA modules: {len(reports)} ({len(sd)} tensors)")
    ranks = sorted({r.rank for r in reports})
    alphas = sorted({r.alpha for r in reports})
    print(f"ranks: {ranks}   alphas: {alphas}")
    dora = sum(k.endswith((".dora_scale", ".lora_magnitude_vector")) for k in sd)
    if dora:
        print(f"DoRA: {dora} modules carry a magnitude vector (dora_scale); |dW| below is the LoRA part before "
              "DoRA rescales each column")
    for prefix in ("lora_te_", "lora_te1_", "lora_te2_", "lora_unet_"):
        n = sum(r.name.startswith(prefix) for r in reports)
        if n:
            print(f"  {prefix.rstrip('_')}: {n} modules")
    print(f"{'module':<90} {'rank':>4} {'alpha':>7} {'|up|':>9} {'|down|':>9} {'|dW|':>9}  problems")
    for r in reports:
        print(f"{r.name:<90} {r.rank:>4} {r.alpha:>7.3g} {r.up_norm:>9.4g} {r.down_norm:>9.4g} {r.delta_norm:>9.4g}  "
              f"{'; '.join(r.problems)}")
    problems = [f"{r.name}: {p}" for r in reports for p in r.problems] + other
    zero = sum("all zero" in p for p in problems)
    bad = sum("NaN" in p for p in problems)
    print(f"summary: {len(reports)} modules, {zero} all-zero tensors, {bad} tensors with NaN/Inf")
    if args.show_all:
        print("metadata:")
        for k in sorted(meta):
            print(f"  {k}: {meta[k][:200]}")
        print(f"number of all tensors: {len(sd)}")
        for k, v in sd.items():
            w = v.float().abs()
            shape = "-".join(str(d) for d in v.shape)
            print(f"{k},({shape}),{float(w.mean()) if w.numel() else 0.0},{float(w.min()) if w.numel() else 0.0}")
    return 1 if bad else 0


if __name__ == "__main__":
    def _entry(argv: list[str] | None = None) -> None:
        code = main(argv)
        if code:
            raise SystemExit(code)

    sys.exit(run_main(_entry))

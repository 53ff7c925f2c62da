"""Show each LoRA/LyCORIS module's kind (LoRA, LoCon, LoHa, LoKr, DoRA, Tucker), rank or LoKr factors, alpha, scale
and |ΔW|, and flag all-zero and NaN/Inf tensors and scale traps (a huge alpha on low-rank factors).

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
    from library.lora_check import check_state_dict, file_notes
    from library.lora_io import load_lora

    sd, meta = load_lora(args.file, check_finite=False)  # reporting NaN/Inf is this tool's job
    reports, other = check_state_dict(sd, args.file)
    print(f"file: {args.file}")
    if meta.get("ss_network_module"):
        print(f"network: {meta['ss_network_module']} {meta.get('ss_network_args', '')}".rstrip())
    print(f"number of LoRA modules: {len(reports)} ({len(sd)} tensors)")
    kinds = sorted({r.kind for r in reports})
    ranks = sorted({r.rank for r in reports if r.rank is not None})
    alphas = sorted({r.alpha for r in reports if r.alpha is not None})
    print(f"kinds: {', '.join(kinds)}   ranks: {ranks}   alphas: {alphas}")
    for prefix in ("lora_te_", "lora_te1_", "lora_te2_", "lora_unet_"):
        n = sum(r.name.startswith(prefix) for r in reports)
        if n:
            print(f"  {prefix.rstrip('_')}: {n} modules")
    print(f"{'module':<90} {'kind':<22} {'rank':>4} {'alpha':>8} {'scale':>8} {'|dW|':>9}  factors / problems")
    for r in reports:
        rank = "-" if r.rank is None else str(r.rank)
        alpha = "-" if r.alpha is None else f"{r.alpha:.4g}"
        print(f"{r.name:<90} {r.kind:<22} {rank:>4} {alpha:>8} {r.scale:>8.4g} {r.delta_norm:>9.4g}  "
              f"{'; '.join(x for x in [r.detail, *r.problems] if x)}")
    for note in file_notes(reports):
        print(note)
    problems = [f"{r.name}: {p}" for r in reports for p in r.problems] + other
    zero = sum("all zero" in p for p in problems)
    bad = sum("NaN" in p for p in problems)
    traps = sum("scale trap" in p for p in problems)
    print(f"summary: {len(reports)} modules, {zero} all-zero tensors, {bad} tensors with NaN/Inf"
          + (f", {traps} scale traps" if traps else ""))
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

"""check_lora_weights.py's modules as a table for the Tools tab, read with the same reader and checks the script
uses (library.lora_check), so the table and the script's printout cannot disagree."""

from __future__ import annotations

from pathlib import Path

HEADERS = ["module", "rank", "alpha", "kind", "scale", "|dW|", "factors / problems"]


def module_table(path: str | Path) -> list[list[object]]:
    """One row per module of `path` (any algorithm): name, rank, alpha, kind, scale, delta norm, factors and
    problems."""
    from library.lora_check import check_state_dict
    from library.lora_io import load_lora

    sd, _ = load_lora(path, check_finite=False)  # NaN/Inf are what the table reports, as the script does
    reports, _ = check_state_dict(sd, str(path))
    return [[r.name, "" if r.rank is None else r.rank, "" if r.alpha is None else round(r.alpha, 4), r.kind,
             float(f"{r.scale:.4g}"), float(f"{r.delta_norm:.4g}"), "; ".join(filter(None, [r.detail, *r.problems]))]
            for r in reports]

"""Per-module statistics of a LoRA file: rank, alpha, factor and delta norms, and problems (zeros, NaN/Inf)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from library.lora_io import LoRAFactors, split_modules


@dataclass
class ModuleReport:
    name: str
    rank: int
    alpha: float
    shape: tuple[int, ...]
    up_norm: float
    down_norm: float
    delta_norm: float
    problems: list[str]


def _problems(name: str, tensors: dict[str, torch.Tensor]) -> list[str]:
    out = []
    for label, t in tensors.items():
        t = t.float()
        if not torch.isfinite(t).all():
            out.append(f"{label} has NaN/Inf")
        elif t.numel() and t.abs().max() == 0:
            out.append(f"{label} all zero")
    return out


def module_report(name: str, m: LoRAFactors) -> ModuleReport:
    """Norms use the alpha-scaled delta, computed through the small core (never the full matrix)."""
    up, down = m.up2d().float(), m.down2d().float()
    finite = torch.isfinite(up).all() and torch.isfinite(down).all()
    # ‖up@down‖_F² = trace((upᵀup)(down downᵀ)) — r x r products only
    delta = float(((up.T @ up) * (down @ down.T)).sum().clamp(min=0).sqrt() * abs(m.scale)) if finite else float("nan")
    shape = (m.up.shape[0], *m.down.shape[1:])
    return ModuleReport(name, m.rank, m.alpha, shape, float(up.norm()), float(down.norm()), delta,
                        _problems(name, {"lora_up": m.up, "lora_down": m.down}))


def check_state_dict(sd: dict[str, torch.Tensor], path: str) -> tuple[list[ModuleReport], list[str]]:
    """Reports for every module and the problems of tensors that belong to no module."""
    modules = split_modules(sd, path)
    reports = [module_report(n, m) for n, m in modules.items()]
    known = {f"{n}.{s}" for n in modules for s in ("lora_down.weight", "lora_up.weight", "alpha")}
    other = [f"{k}: {p}" for k, v in sd.items() if k not in known and v.is_floating_point()
             for p in _problems(k, {k: v})]
    return reports, other

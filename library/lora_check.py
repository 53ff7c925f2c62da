"""Per-module statistics of a LoRA/LyCORIS file: algorithm, rank/factors, alpha, scale, |ΔW|, and problems
(zeros, NaN/Inf, scale traps such as a huge full-matrix alpha on low-rank LoKr factors)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

import library.adapters as A
from library.adapters.equivalent import factored
from library.errors import ToolkitError

SCALE_TRAP = 16.0  # α/r above this multiplies the change far beyond what trainers write (α ≤ r, or α = 2r)


@dataclass
class ModuleReport:
    name: str
    kind: str  # e.g. "LoRA", "LoCon Tucker", "LoKr +DoRA(out)"
    rank: int | None  # r of α/r; None when nothing is low-rank (LoKr all-full, diff, norms)
    detail: str  # factor shapes that matter: LoKr W1/W2, Tucker kernel
    alpha: float | None
    scale: float
    delta_norm: float
    problems: list[str]


def _problems(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    out = []
    for label, t in tensors.items():
        if not t.is_floating_point():
            continue
        t = t.float()
        if not torch.isfinite(t).all():
            out.append(f"{label} has NaN/Inf")
        elif t.numel() > 1 and t.abs().max() == 0:
            out.append(f"{label} all zero")
    return out


def _kind(tensors: Mapping[str, torch.Tensor], algo: str) -> str:
    conv = any(t.ndim == 4 for t in tensors.values()) or "hada_t1" in tensors or "lokr_t2" in tensors
    kind = "LoCon" if algo == A.LORA and conv else {A.LORA: "LoRA"}.get(algo, A.NAMES[algo])
    if {"lora_mid.weight", "hada_t1", "lokr_t2"} & set(tensors):
        kind += " Tucker"
    if A.is_dora(tensors):
        axis = A.dora_out_axis(tensors["dora_scale"], A.natural_shape(tensors))
        kind += f" +DoRA({'out' if axis else 'in'})"
    return kind


def _detail(tensors: Mapping[str, torch.Tensor], algo: str) -> str:
    if algo != A.LOKR:
        return ""

    def part(i: str) -> str:
        if f"lokr_w{i}" in tensors:
            s = tensors[f"lokr_w{i}"].shape
            return f"W{i} {s[0]}x{s[1]} full"
        a, b = tensors[f"lokr_w{i}_a"].shape, tensors[f"lokr_w{i}_b"].shape
        out = b[0] if "lokr_t2" in tensors and i == "2" else a[0]  # Tucker keeps w2_a as [r, out_k]
        return f"W{i} {out}x{b[-1]} r{b[0]}"

    return f"{part('1')}, {part('2')}"


def _delta_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """‖ΔW‖_F through the factored form's R x R Gram matrices (never the dense change for low-rank modules)."""
    up, down = factored(tensors, torch.float32)
    if not (torch.isfinite(up).all() and torch.isfinite(down).all()):
        return float("nan")
    if up.shape[1] >= min(up.shape[0], down.shape[1]):
        return float((up @ down).norm())
    return float(((up.T @ up) * (down @ down.T)).sum().clamp(min=0).sqrt())


def module_report(name: str, tensors: Mapping[str, torch.Tensor]) -> ModuleReport:
    """Statistics of one module; scale traps are listed with the problems."""
    algo = A.algorithm_of(tensors, name)
    scale, alpha, rank = A.scale_of(tensors), A.alpha_of(tensors), A.rank_of(tensors)
    problems = _problems(tensors)
    if scale > SCALE_TRAP:
        what = "a full-matrix LoKr alpha on low-rank factors?" if algo == A.LOKR else "alpha far above the rank"
        problems.append(f"scale trap: alpha/r = {alpha:g}/{rank} = {scale:g} ({what})")
    norm = _delta_norm(tensors) if algo != A.NORM else float(tensors["w_norm"].float().norm())
    return ModuleReport(name, _kind(tensors, algo), rank, _detail(tensors, algo), alpha, scale, norm, problems)


def check_state_dict(sd: dict[str, torch.Tensor], path: str) -> tuple[list[ModuleReport], list[str]]:
    """Reports for every module and the problems of tensors that belong to no module; unknown module kinds
    are refused by name."""
    groups = A.group_modules(sd)
    reports, other = [], []
    for name, tensors in groups.items():
        if not set(tensors) & A.MODULE_SUFFIXES:
            other += [f"{name}.{k}: {p}" for k, v in tensors.items() for p in _problems({k: v})]
            continue
        try:
            reports.append(module_report(name, tensors))
        except ToolkitError as e:
            raise ToolkitError(f"{path}: {e}") from None
    return reports, other


def file_notes(reports: list[ModuleReport]) -> list[str]:
    """File-level remarks: LoKr layers whose alpha is ignored next to layers where it applies (per-layer switch)."""
    lokr = [r for r in reports if r.kind.startswith("LoKr")]
    full = [r for r in lokr if r.rank is None]
    if full and len(full) < len(lokr):
        alphas = sorted({r.alpha for r in lokr if r.rank is not None and r.alpha is not None})
        return [f"note: {len(full)} LoKr module(s) have only full factors (scale 1, their alpha ignored) while "
                f"{len(lokr) - len(full)} are low-rank (scale alpha/r with alpha {alphas}): LyCORIS switches per layer"]
    return []

"""Scores of singular directions (log10, relative to base-model or LoRA references) and the kept set.

score_i = log10(σ_i) + log10(rescale) − Σ_k w_k·log10(ref_k); a direction is kept when its score reaches
the threshold. `size=` picks the threshold greedily: directions in descending score order, each costing the
bytes of its up column and down row (plus a layer's header and alpha the first time the layer appears),
until the file reaches the target.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from library.resize.decompose import Decomposed
from library.resize.recipe import Recipe

QUANTILES = (0.01, 0.10, 0.25, 0.50, 0.75, 0.90, 0.99)
_TINY = 1e-30


@dataclass
class LayerRefs:
    """Base-model references of one layer (None where no recipe needs them)."""

    fro_ckpt: float | None = None
    spn_ckpt: float | None = None
    subspace: torch.Tensor | None = None  # |u_iᵀ W v_i| per direction


def subspace_scales(layer: Decomposed, w: torch.Tensor) -> torch.Tensor:
    """|u_iᵀ W v_i|: how much of the base weight lies along each LoRA direction."""
    u, vh = layer.u.to(w.device), layer.vh.to(w.device)
    return ((u.T @ w) * vh).sum(dim=1).abs().double().cpu()


def score_layer(layer: Decomposed, refs: LayerRefs, recipe: Recipe) -> torch.Tensor:
    """Per-direction scores in float64; directions with σ = 0 score -inf and are never kept."""
    w = recipe.weights
    sigma = layer.sigma.double()
    scores = torch.log10(sigma) + math.log10(recipe.rescale)
    if abs(w["subspace"]) > 1e-6:
        scores -= w["subspace"] * torch.log10(refs.subspace.clamp_min(_TINY))
    if abs(w["spn_ckpt"]) > 1e-6:
        scores -= w["spn_ckpt"] * math.log10(max(refs.spn_ckpt, _TINY))
    if abs(w["spn_lora"]) > 1e-6:
        scores -= w["spn_lora"] * math.log10(float(sigma[0]))
    if abs(w["fro_ckpt"]) > 1e-6:
        scores -= w["fro_ckpt"] * math.log10(max(refs.fro_ckpt, _TINY))
    if abs(w["fro_lora"]) > 1e-6:
        scores -= w["fro_lora"] * math.log10(float(torch.linalg.vector_norm(sigma)))
    if abs(w["params"]) > 1e-6:
        scores -= w["params"] * math.log10(layer.params_per_dim)
    scores[sigma <= 0] = -math.inf
    return scores


def offset_digits(recipe: Recipe) -> int:
    """Digits of the data offsets in the header, from the size the file is aimed at."""
    return len(str(int(recipe.size_mib * 2**20))) if recipe.size_mib is not None else 8


def entry_bytes(key: str, shape: tuple[int, ...], elem: int, digits: int = 8) -> int:
    """Header bytes of one tensor in a safetensors file (offsets taken as `digits` long)."""
    big = 10 ** (digits - 1)
    entry = {key: {"dtype": "F16" if elem == 2 else "F32", "shape": list(shape), "data_offsets": [big, big]}}
    return len(json.dumps(entry, separators=(",", ":"))) - 1


def layer_overhead(name: str, layer: Decomposed, elem: int, digits: int) -> int:
    """Bytes a layer costs once it keeps any direction: its alpha and its three header entries."""
    k = 10  # two digits for the new rank
    down = (k, *layer.down_shape)
    up = (layer.out_features, k, 1, 1) if layer.up_is_4d else (layer.out_features, k)
    return elem + sum(entry_bytes(f"{name}.{s}", shape, elem, digits)
                      for s, shape in (("lora_down.weight", down), ("lora_up.weight", up), ("alpha", ())))


@dataclass
class Selection:
    """The threshold a recipe ends with, the kept directions per layer and the size estimate."""

    threshold: float
    keep: list[torch.Tensor]
    est_bytes: int
    next_bytes: int | None


def select(layers: list[Decomposed], scores: list[torch.Tensor], recipe: Recipe, elem: int,
           fixed_bytes: int) -> Selection:
    """Apply `thr=` directly, or find the threshold whose file lands at `size=` (first size ≥ target)."""
    dim_bytes = [elem * layer.params_per_dim for layer in layers]
    overhead = [layer_overhead(layer.name, layer, elem, offset_digits(recipe)) for layer in layers]
    flat = torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64)
    owner = torch.cat([torch.full((s.shape[0],), i) for i, s in enumerate(scores)]) if scores else torch.zeros(0)
    finite = flat > -math.inf
    flat, owner = flat[finite], owner[finite].long()
    order = torch.sort(-flat, stable=True).indices
    flat, owner = flat[order], owner[order]
    first = torch.zeros_like(owner, dtype=torch.bool)
    if owner.numel():
        seen = torch.zeros(len(layers), dtype=torch.bool)
        # first occurrence of each layer in score order pays the layer's header and alpha
        positions = torch.full((len(layers),), owner.numel(), dtype=torch.long)
        positions.scatter_reduce_(0, owner, torch.arange(owner.numel()), reduce="amin")
        seen[owner] = True
        first[positions[seen]] = True
    cost = torch.tensor(dim_bytes, dtype=torch.long)[owner] + first * torch.tensor(overhead, dtype=torch.long)[owner]
    cum = fixed_bytes + torch.cumsum(cost, 0)
    if recipe.size_mib is None:
        threshold = recipe.threshold
        n_kept = int((flat >= threshold).sum())
    else:
        target = recipe.size_mib * 2**20
        if cum.numel() == 0 or target >= int(cum[-1]):
            threshold, n_kept = -math.inf, int(flat.numel())
        else:
            idx = int(torch.searchsorted(cum, torch.tensor(target, dtype=cum.dtype)))
            threshold = float(flat[idx])
            n_kept = int((flat >= threshold).sum())
    est = int(cum[n_kept - 1]) if n_kept else fixed_bytes
    nxt = int(cum[n_kept]) if n_kept < cum.numel() else None
    keep = [(s >= threshold) & (s > -math.inf) for s in scores]
    return Selection(threshold, keep, est, nxt)


def quantile_line(scores: list[torch.Tensor]) -> str:
    """`Score quantiles: 0.01:x 0.10:x ...` over every finite score."""
    flat = torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64)
    flat = flat[torch.isfinite(flat)]
    if flat.numel() == 0:
        return "Score quantiles: (no scores)"
    qs = torch.quantile(flat, torch.tensor(QUANTILES, dtype=flat.dtype)) if flat.numel() < 2**24 else None
    if qs is None:  # torch.quantile refuses very large inputs; sort instead
        srt = flat.sort().values
        qs = torch.stack([srt[int(round(q * (flat.numel() - 1)))] for q in QUANTILES])
    return "Score quantiles: " + " ".join(f"{q:.2f}:{float(v):.3f}" for q, v in zip(QUANTILES, qs))

"""LoRA + LoRA merging: exact concatenation, the legacy factor-wise sum, and the SVD merge to a new rank.

Each input i contributes c_i·up_i@down_i to a module's delta, c_i = ratio_i · block weight · alpha_i/rank_i.
`concat` keeps every contribution exactly (rank = Σ ranks); `svd` gives the best rank-k approximation of the
sum (Eckart-Young) from the stacked factors; `sum` reproduces sd-scripts' factor-wise sum, which is only
exact for a single input.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

import library.adapters as A
from library.adapters.equivalent import effective_delta, factored, layer_shape
from library.errors import ToolkitError
from library.lora_io import LoRAFactors
from library.lora_sources import LoRASource, as_2d_shape, check_same_layer, ordered_names
from library.lowrank import check_clamp_quantile, lowrank_of_sum, quantile_abs_clamp
from library.merge import BaseWeights
from library.metadata import base_model_version, modelspec

log = logging.getLogger(__name__)


def _like(t: torch.Tensor, ndim: int, kernel_1x1: bool) -> torch.Tensor:
    """View 1x1-conv factors as Linear ones or the reverse, so inputs of both kinds can be joined."""
    if t.ndim == ndim or not kernel_1x1:
        return t
    return t.reshape(*t.shape[:2], 1, 1) if ndim == 4 else t.reshape(t.shape[0], t.shape[1])


def concat_module(parts: Sequence[tuple[LoRAFactors, float]]) -> LoRAFactors:
    """Exact join: Σ c_i·up_i@down_i as one module of rank Σ r_i.

    alpha/rank of the result is the rank-weighted geometric mean g of |c_i|; input i's factors are scaled by
    sqrt(|c_i|/g) each (sign on down), so they keep their magnitude when the inputs agree.
    """
    parts = [(f, c) for f, c in parts if c != 0]
    total = sum(f.rank for f, _ in parts)
    g = math.exp(sum(f.rank * math.log(abs(c)) for f, c in parts) / total)
    ndim = parts[0][0].down.ndim
    downs, ups = [], []
    for f, c in parts:
        s = math.sqrt(abs(c) / g)
        one = f.kernel_size == (1, 1)
        downs.append(_like(f.down, ndim, one) * (s if c > 0 else -s))
        ups.append(_like(f.up, ndim, one) * s)
    return LoRAFactors(torch.cat(downs, dim=0), torch.cat(ups, dim=1), g * total)


def sum_module(parts: Sequence[tuple[LoRASource, LoRAFactors]], name: str) -> LoRAFactors:
    """sd-scripts' default merge: up = Σ|s_i|·up_i, down = Σ s_i·down_i with s_i = sqrt(alpha_i/alpha_0)·ratio_i.

    Kept for compatibility: its product has cross terms up_i@down_j, so it is exact only for one input.
    """
    base_alpha = parts[0][1].alpha
    ndim = parts[0][1].down.ndim
    up = down = None
    for src, f in parts:
        s = math.sqrt(f.alpha / base_alpha) * src.ratio
        w = src.lbw(name)  # sd-scripts (sdxl_merge_lora) scales both factors by the block weight
        one = f.kernel_size == (1, 1)
        u, d = _like(f.up, ndim, one) * (abs(s) * w), _like(f.down, ndim, one) * (s * w)
        up, down = (u, d) if up is None else (up + u, down + d)
    return LoRAFactors(down, up, base_alpha)


def shuffle_module(f: LoRAFactors, generator: torch.Generator | None = None) -> LoRAFactors:
    """Permute the rank directions: the product up@down is unchanged, the split between inputs is hidden."""
    p = torch.randperm(f.rank, generator=generator)
    return LoRAFactors(f.down[p], f.up[:, p], f.alpha)


def merge_loras(sources: Sequence[LoRASource], mode: str = "concat", shuffle: bool = False,
                dtype: torch.dtype = torch.float32) -> dict[str, LoRAFactors]:
    """Merge LoRAs into one: `concat` (exact, ranks add up) or `sum` (sd-scripts' factor-wise sum, equal ranks)."""
    names = ordered_names(sources)
    for s in sources:
        other = next((n for n in s.names if not s.is_plain(n)), None)
        if other is not None:
            kind = "DoRA" if s.is_dora(other) else ("Tucker LoCon" if s.algos[other] == A.LORA else A.NAMES[s.algos[other]])
            raise ToolkitError(f"{s.path}: module {other} is {kind}, which LoRA+LoRA merging cannot join exactly; use "
                               "svd_merge_lora.py (any algorithms, a LoRA of the rank you choose) or --sd_model")
    holders = {n: check_same_layer(sources, n) for n in names}
    if mode == "sum":
        for n, hs in holders.items():
            if len({s.rank(n) for s in hs}) > 1:
                ranks = ", ".join(f"{s.path.name}: {s.rank(n)}" for s in hs)
                raise ToolkitError(f"module {n} has different ranks ({ranks}); the factor-wise sum needs equal "
                                   "ranks. Use --concat (exact) or svd_merge_lora.py (any ranks, new rank)")
        if len(sources) > 1:
            log.warning("summing the factors of several LoRAs adds cross terms up_i@down_j, so the result is not "
                        "the sum of their effects (and a ratio r acts like r·|r|); --concat is exact, "
                        "svd_merge_lora.py gives the best approximation at a chosen rank")
    out = {}
    for n in tqdm(names, desc="merging", unit="module"):
        hs = holders[n]
        if mode == "sum":
            f = sum_module([(s, s.factors(n, dtype)) for s in hs], n)
        else:
            parts = [(s.factors(n, dtype), s.coef(n)) for s in hs]
            if all(c == 0 for _, c in parts):
                log.debug("%s: every ratio is 0, module left out", n)
                continue
            f = concat_module(parts)
        out[n] = shuffle_module(f) if shuffle else f
    return _not_empty(out)


def _not_empty(modules: dict[str, LoRAFactors]) -> dict[str, LoRAFactors]:
    if not modules:
        raise ToolkitError("--ratios/--lbws: every module has weight 0, so the merged LoRA would be empty")
    return modules


def svd_merge(sources: Sequence[LoRASource], new_rank: int, new_conv_rank: int | None = None,
              device: str | None = None, dtype: torch.dtype = torch.float32,
              clamp_quantile: float | None = None, base: BaseWeights | None = None) -> dict[str, LoRAFactors]:
    """Best rank-`new_rank` LoRA of Σ ratio·ΔW_i per module (kxk convs: `new_conv_rank`), any algorithms.

    Inputs are read in `dtype`; the decomposition itself runs in float32 (LAPACK has no half precision). DoRA
    inputs need `base` (their change depends on the base weight) and contribute W' − W at strength 1.
    """
    if new_rank < 1 or (new_conv_rank is not None and new_conv_rank < 1):
        raise ToolkitError("--new_rank/--new_conv_rank must be at least 1")
    _need_base(sources, base)
    check_clamp_quantile(clamp_quantile)
    conv_rank = new_conv_rank or new_rank
    dev = torch.device(device) if device else torch.device("cpu")
    out = {}
    for n in tqdm(ordered_names(sources), desc="svd merge", unit="module"):
        hs = [s for s in check_same_layer(sources, n) if s.algos[n] != A.NORM]
        if not hs:
            log.warning("%s: norm modules have no low-rank form; left out", n)
            continue
        shape = _layer_shape(hs, n, base)
        n_out, n_in, kernel = as_2d_shape(shape)
        terms, dense = [], None
        for s in hs:
            if s.weight(n) == 0:
                continue
            if s.is_plain(n):
                f = s.factors(n, dtype)
                terms.append((f.up2d().to(dev, torch.float32), f.down2d().to(dev, torch.float32), s.coef(n)))
                continue
            module = s.module(n, dtype)
            if s.is_dora(n):
                w = base.get(n)
                d = effective_delta(module, w.reshape(shape), n, torch.float32).to(dev) * s.weight(n)
                dense = d if dense is None else dense + d
            else:
                up, down = factored(module, torch.float32)
                terms.append((up.to(dev), down.to(dev), s.weight(n)))
        if not terms and dense is None:
            log.debug("%s: every ratio is 0, module left out", n)
            continue
        k = min(conv_rank if kernel else new_rank, n_out, shape[1])  # capped as sd-scripts: in channels
        try:
            up, down, _ = lowrank_of_sum(terms, k, dense)
        except torch.linalg.LinAlgError as e:  # finite inputs whose product overflows float32
            raise ToolkitError(f"module {n}: the merged change cannot be decomposed ({str(e).splitlines()[0][:120]});"
                               " check the inputs' values with check_lora_weights.py") from None
        if clamp_quantile is not None and clamp_quantile < 1:
            up, down = quantile_abs_clamp(up, down, clamp_quantile)
        if len(shape) == 4:
            up, down = up.reshape(n_out, k, 1, 1), down.reshape(k, *shape[1:])
        out[n] = LoRAFactors(down.cpu(), up.cpu(), float(k))
    return _not_empty(out)


def _need_base(sources: Sequence[LoRASource], base: BaseWeights | None) -> None:
    """DoRA inputs need the base model, and every one of their modules must be found in it."""
    for s in sources:
        dora = [n for n in s.names if s.is_dora(n)]
        if dora and base is None:
            raise ToolkitError(f"{s.path}: has DoRA modules, whose change depends on the base weights; give the base "
                               "checkpoint with --sd_model")
        lost = [n for n in dora if base.get_shape(n) is None]
        if lost:
            raise ToolkitError(f"{s.path}: DoRA module {lost[0]} has no weight in {base.path}; is it the right base "
                               "model?")


def _layer_shape(holders: Sequence[LoRASource], name: str, base: BaseWeights | None) -> tuple[int, ...]:
    """The layer's weight shape: from the base model when given, else from the inputs' factors and the name."""
    if base is not None and base.get_shape(name) is not None:
        return base.get_shape(name)
    shapes = [s.delta_shape(name) for s in holders]
    four = next((sh for sh in shapes if len(sh) == 4), None)
    if four is not None:
        return four
    return layer_shape(name, holders[0].stand_ins[name], sdxl=holders[0].sdxl)


def common_or_dynamic(values: Sequence[float | int]) -> str:
    """One value if all modules share it (kohya writes ints for dims, floats for alphas), else `Dynamic`."""
    distinct = set(values)
    return str(distinct.pop()) if len(distinct) == 1 else "Dynamic"


def _base_version(sources: Sequence[LoRASource]) -> tuple[str, str]:
    """(ss_base_model_version, ss_v2) from the first input that has them, else guessed from the names."""
    for s in sources:
        if "ss_base_model_version" in s.metadata:
            ver = s.metadata["ss_base_model_version"]
            return ver, s.metadata.get("ss_v2", str(ver.startswith("sd_v2")))
    for s in sources:
        if "ss_v2" in s.metadata:
            v2 = s.metadata["ss_v2"] == "True"
            return base_model_version("sd2" if v2 else "sd1"), str(v2)
    family = "sdxl" if sources[0].sdxl else "sd1"
    return base_model_version(family), "False"


def merged_lora_metadata(sources: Sequence[LoRASource], modules: dict[str, LoRAFactors], save_to: str | Path,
                         no_metadata: bool = False, dim: str | None = None, alpha: str | None = None,
                         network_args: str | None = None) -> dict[str, str]:
    """Minimum `ss_*` set (dim/alpha: given, or the common value, or `Dynamic`) plus modelspec unless disabled."""
    ver, v2 = _base_version(sources)
    meta = {
        "ss_v2": v2,
        "ss_base_model_version": ver,
        "ss_network_module": "networks.lora",
        "ss_network_dim": dim or common_or_dynamic([m.rank for m in modules.values()]),
        "ss_network_alpha": alpha or common_or_dynamic([float(m.alpha) for m in modules.values()]),
    }
    if network_args is not None:
        meta["ss_network_args"] = network_args
    if not no_metadata:
        family = "sdxl" if ver.startswith("sdxl") else ("sd2" if v2 == "True" else "sd1")
        v_param = ver.endswith("_v") or any(s.metadata.get("modelspec.prediction_type") == "v" for s in sources)
        meta.update(modelspec(family, v_param, lora=True, title=Path(save_to).stem,
                              merged_from=", ".join(s.title for s in sources)))
    return meta

"""Adapter modules as stored in a file: grouping, classification, scale and ΔW of one module's tensors.

A module is `{suffix: tensor}` (suffix e.g. `lora_up.weight`, `hada_w1_a`, `lokr_w2`, `alpha`, `dora_scale`).
Classification follows LyCORIS' order; scale is α/r with r read where each algorithm keeps it, missing alpha
meaning scale 1 (as ComfyUI and A1111), and a LoKr whose factors are all full always scale 1 (its alpha,
often 100000, is ignored by every client). Never LyCORIS' merge path, which applies (α/r)² to LoHa/LoKr.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from library.adapters import factors as F
from library.errors import ToolkitError

LORA, LOHA, LOKR, FULL, NORM = "lora", "loha", "lokr", "full", "norm"
ALGORITHMS = (LORA, LOHA, LOKR, FULL, NORM)
COMMON = frozenset({"alpha", "dora_scale"})
SUFFIXES = {
    LORA: frozenset({"lora_up.weight", "lora_down.weight", "lora_mid.weight"}),
    LOHA: frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"}),
    LOKR: frozenset({"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"}),
    FULL: frozenset({"diff", "diff_b"}),
    NORM: frozenset({"w_norm", "b_norm"}),
}
MODULE_SUFFIXES = frozenset().union(*SUFFIXES.values())
ALL_SUFFIXES = COMMON | MODULE_SUFFIXES
# kinds LyCORIS or kohya can write that no tool here applies: the suffix that names them
UNSUPPORTED = (("on_input", "IA3"), ("oft_blocks", "OFT/BOFT"), ("oft_diag", "OFT (LyCORIS 2.0)"),
               ("a1.weight", "GLoRA"), ("q_layer.weight", "T-LoRA"), ("lokr_t1", "LoKr prototype (lokr_t1)"))
_BY_LENGTH = sorted(ALL_SUFFIXES | {s for s, _ in UNSUPPORTED}, key=len, reverse=True)
NAMES = {LORA: "LoRA/LoCon", LOHA: "LoHa", LOKR: "LoKr", FULL: "full (diff)", NORM: "norm"}

Tensors = Mapping[str, torch.Tensor]


def group_modules(sd: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Module name -> {suffix: tensor}: a known suffix ends the key (so dotted module names work too), else the
    key is split at its first dot (kohya/LyCORIS module names have none)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        suffix = next((s for s in _BY_LENGTH if key.endswith("." + s)), None)
        if suffix is not None:
            name = key[: -len(suffix) - 1]
        else:
            name, dot, suffix = key.partition(".")
            if not dot:
                raise ToolkitError(f"tensor {key}: not a `<module>.<suffix>` key of a LoRA/LyCORIS file")
        out.setdefault(name, {})[suffix] = value
    return out


def algorithm_of(tensors: Tensors, name: str = "") -> str:
    """'lora', 'loha', 'lokr', 'full' or 'norm' by the keys, in LyCORIS' order; anything else is an error."""
    keys = set(tensors)
    where = f"module {name}" if name else "module"
    for suffix, kind in UNSUPPORTED:
        if suffix in keys:
            raise ToolkitError(f"{where}: {kind} modules are not supported (key {suffix})")
    if "lora_up.weight" in keys or "lora_down.weight" in keys:
        algo = LORA
    elif "hada_w1_a" in keys:
        algo = LOHA
    elif "lokr_w1" in keys or "lokr_w1_a" in keys:
        algo = LOKR
    elif "diff" in keys:
        algo = FULL
    elif "w_norm" in keys:
        algo = NORM
    else:
        listing = ", ".join(sorted(keys)[:6]) + (" ..." if len(keys) > 6 else "")
        raise ToolkitError(f"{where}: unknown module kind (keys {listing})")
    odd = keys - SUFFIXES[algo] - COMMON
    if odd:
        raise ToolkitError(f"{where}: {NAMES[algo]} module with unknown key(s) {', '.join(sorted(odd))}")
    _check_complete(algo, keys, where)
    return algo


def _check_complete(algo: str, keys: set[str], where: str) -> None:
    missing: list[str] = []
    if algo == LORA:
        missing = [k for k in ("lora_up.weight", "lora_down.weight") if k not in keys]
    elif algo == LOHA:
        missing = [k for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b") if k not in keys]
        if ("hada_t1" in keys) != ("hada_t2" in keys):
            missing.append("hada_t2" if "hada_t1" in keys else "hada_t1")
    elif algo == LOKR:
        if "lokr_w1" not in keys and not {"lokr_w1_a", "lokr_w1_b"} <= keys:
            missing.append("lokr_w1_b" if "lokr_w1_a" in keys else "lokr_w1")
        if "lokr_w2" not in keys and not {"lokr_w2_a", "lokr_w2_b"} <= keys:
            missing.append("lokr_w2 (or lokr_w2_a + lokr_w2_b)")
    elif algo == NORM and "w_norm" not in keys:
        missing.append("w_norm")
    if missing:
        raise ToolkitError(f"{where}: {NAMES[algo]} module without {', '.join(missing)}")


def is_dora(tensors: Tensors) -> bool:
    """True when the module carries a DoRA magnitude (`dora_scale`)."""
    return "dora_scale" in tensors


def rank_of(tensors: Tensors) -> int | None:
    """The r of α/r: LoRA down rows, LoHa w1_b rows, LoKr w2_b (else w1_b) rows; None when nothing is low-rank."""
    algo = algorithm_of(tensors)
    if algo == LORA:
        return int(tensors["lora_down.weight"].shape[0])
    if algo == LOHA:
        return int(tensors["hada_w1_b"].shape[0])
    if algo == LOKR:
        for key in ("lokr_w2_b", "lokr_w1_b"):
            if key in tensors:
                return int(tensors[key].shape[0])
    return None


def alpha_of(tensors: Tensors) -> float | None:
    """The stored alpha as the file holds it (bf16/fp16 rounding kept, as every client reads it), or None."""
    a = tensors.get("alpha")
    return None if a is None else float(a.float())


def scale_of(tensors: Tensors) -> float:
    """α/r; 1 without alpha (or alpha 0, which trainers mean as alpha = r) and for an all-full LoKr."""
    r = rank_of(tensors)
    alpha = alpha_of(tensors)
    if r is None or alpha is None or alpha == 0:
        return 1.0
    return alpha / r


def _dtype(tensors: Tensors, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    out = None
    for key, t in tensors.items():
        if key != "alpha" and t.is_floating_point():
            out = t.dtype if out is None else torch.promote_types(out, t.dtype)
    return out or torch.float32


def raw_delta(tensors: Tensors, shape: Sequence[int] | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Unscaled ΔW (the factor product), shaped `shape` when given."""
    dt = _dtype(tensors, dtype)

    def g(key: str) -> torch.Tensor | None:
        t = tensors.get(key)
        return None if t is None else t.to(dt)

    algo = algorithm_of(tensors)
    if algo == LORA:
        return F.lora_delta(g("lora_up.weight"), g("lora_down.weight"), g("lora_mid.weight"), shape)
    if algo == LOHA:
        return F.loha_delta(g("hada_w1_a"), g("hada_w1_b"), g("hada_w2_a"), g("hada_w2_b"), g("hada_t1"),
                            g("hada_t2"), shape)
    if algo == LOKR:
        return F.lokr_delta(g("lokr_w1"), g("lokr_w1_a"), g("lokr_w1_b"), g("lokr_w2"), g("lokr_w2_a"),
                            g("lokr_w2_b"), g("lokr_t2"), shape)
    w = g("diff") if algo == FULL else g("w_norm")
    return w.reshape(*shape) if shape is not None else w


def delta_weight(tensors: Tensors, shape: Sequence[int] | None = None, dtype: torch.dtype | None = None,
                 name: str = "") -> torch.Tensor:
    """Scaled additive ΔW = (α/r)·product, shaped like the base weight `shape` (dtype of the factors unless given).

    Without `shape` the natural shape is returned; flat-conv LoHa/LoKr then come back 2-D [out, in·kh·kw].
    """
    want = natural_shape(tensors)
    if shape is not None and math.prod(shape) != math.prod(want):
        where = f"module {name}" if name else "module"
        raise ToolkitError(f"{where}: its change has {tuple(want)} = {math.prod(want)} values, the layer "
                           f"{tuple(shape)}; is it made for another base model?")
    w = raw_delta(tensors, shape if shape is not None else want, dtype)
    s = scale_of(tensors)
    return w * s if s != 1 else w


def bias_delta(tensors: Tensors, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """Additive change of the layer's bias (`diff_b` of full modules, `b_norm` of norms), or None."""
    b = tensors.get("diff_b", tensors.get("b_norm"))
    return None if b is None else b.to(_dtype(tensors, dtype))


def natural_shape(tensors: Tensors) -> tuple[int, ...]:
    """ΔW's shape as far as the factors tell: 4-D when a kernel is stored, else [out, in(·kh·kw)]."""
    algo = algorithm_of(tensors)
    t = tensors
    if algo == LORA:
        down, up = t["lora_down.weight"], t["lora_up.weight"]
        if "lora_mid.weight" in t:
            return (up.shape[0], down.shape[1], *t["lora_mid.weight"].shape[2:])
        return (up.shape[0], *down.shape[1:])
    if algo == LOHA:
        if "hada_t1" in t:
            return (t["hada_w1_a"].shape[1], t["hada_w1_b"].shape[1], *t["hada_t1"].shape[2:])
        return (t["hada_w1_a"].shape[0], t["hada_w1_b"].shape[1])
    if algo == LOKR:
        w1 = t["lokr_w1"].shape if "lokr_w1" in t else (t["lokr_w1_a"].shape[0], t["lokr_w1_b"].shape[1])
        if "lokr_w2" in t:
            w2 = tuple(t["lokr_w2"].shape)
            return (w1[0] * w2[0], w1[1] * w2[1], *w2[2:])
        if "lokr_t2" in t:
            return (w1[0] * t["lokr_w2_a"].shape[1], w1[1] * t["lokr_w2_b"].shape[1], *t["lokr_t2"].shape[2:])
        b = t["lokr_w2_b"]
        return (w1[0] * t["lokr_w2_a"].shape[0], w1[1] * math.prod(b.shape[1:]))
    return tuple((t["diff"] if algo == FULL else t["w_norm"]).shape)


def dora_out_axis(dora_scale: torch.Tensor, shape: Sequence[int], name: str = "") -> bool:
    """True for a per-output-row magnitude ([out], [out,1(,1,1)]), False for per-input-column ([1,in(,1,1)])."""
    n_out, n_in = shape[0], shape[1]
    s = tuple(dora_scale.shape)
    if dora_scale.ndim >= 1 and s[0] == n_out and dora_scale.numel() == n_out:
        return True
    if dora_scale.ndim >= 2 and s[0] == 1 and s[1] == n_in and dora_scale.numel() == n_in:
        return False
    where = f"module {name}" if name else "module"
    raise ToolkitError(f"{where}: dora_scale {s} fits neither the output rows nor the input columns of the "
                       f"layer {tuple(shape)}")


def dora_weight(base: torch.Tensor, tensors: Tensors, multiplier: float = 1.0, name: str = "") -> torch.Tensor:
    """DoRA's W' = V·(s·(m/n − 1) + 1) with V = W + ΔW (α/r inside, full strength), n = ‖V‖ along the axis of
    `dora_scale` (LyCORIS ≥ 3.1 strength convention: m·V/‖V‖ at s = 1, V at s = 0)."""
    v = base + delta_weight(tensors, base.shape, base.dtype, name)
    out_axis = dora_out_axis(tensors["dora_scale"], base.shape, name)
    return F.weight_decompose(v, tensors["dora_scale"], out_axis, multiplier)


def apply_delta(base: torch.Tensor, tensors: Tensors, multiplier: float = 1.0, name: str = "") -> torch.Tensor:
    """The patched weight W' for any algorithm: W + s·ΔW, or the DoRA weight when the module has `dora_scale`."""
    if is_dora(tensors):
        return dora_weight(base, tensors, multiplier, name)
    return base + multiplier * delta_weight(tensors, base.shape, base.dtype, name)

"""Any adapter module as an exact LoRA: factored forms of LoHa/LoKr/Tucker ΔW, layer shapes, DoRA's effective change.

A LoHa (W1a·W1b) ⊙ (W2a·W2b) is the product of Khatri-Rao factors of rank r1·r2, a LoKr kron(A·B, C·D) is
kron(A,C)·kron(B,D), a Tucker core folds into the down factor: so every additive module is `up @ down` with a
modest inner rank, and the QR-based SVD of the low-rank tools never needs the dense out x in matrix. DoRA is not
additive (its change depends on the base weight): it needs the base weight and comes back dense.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from library.adapters import modules as M
from library.errors import ToolkitError
from library.lowrank import svd_of_product

log = logging.getLogger(__name__)
Tensors = Mapping[str, torch.Tensor]

# U-Net layers that are 3x3 convs in SD1/SD2 (Diffusers-style names) and SDXL (SGM names)
_KXK = re.compile(r"(_conv[12]$|_conv_in$|_conv_out$|samplers_0_conv$|_in_layers_2$|_out_layers_3$|_0_op$"
                  r"|output_blocks_\d+_\d_conv$|input_blocks_0_0$|lora_unet_out_2$)")
_CONV1X1 = re.compile(r"(_conv_shortcut$|_skip_connection$)")


def layer_shape(name: str, tensors: Tensors, base_shape: Sequence[int] | None = None,
                sdxl: bool = False) -> tuple[int, ...]:
    """The shape of the layer a module changes: the base weight's when known, else what the factors and the
    module's name say (LoHa/LoKr keep 3x3 and 1x1 kernels flat; SD1/SD2 proj_in/out are 1x1 convs in kohya files)."""
    natural = M.natural_shape(tensors)
    if base_shape is not None:
        return tuple(base_shape)
    if len(natural) == 4:
        return natural
    out, flat = natural
    if _KXK.search(name) and flat % 9 == 0:
        return (out, flat // 9, 3, 3)
    if _CONV1X1.search(name) or (not sdxl and name.startswith("lora_unet_") and name.endswith(("_proj_in", "_proj_out"))):
        return (out, flat, 1, 1)
    return natural


def _khatri_rao_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Kronecker: out[o, i·r2 + j] = a[o,i]·b[o,j] (so (A1B1) ⊙ (A2B2) = KR(A1,A2) @ KR(B1ᵀ,B2ᵀ)ᵀ)."""
    return (a[:, :, None] * b[:, None, :]).reshape(a.shape[0], -1)


def _lowrank_pair(full: torch.Tensor | None, a: torch.Tensor | None, b: torch.Tensor | None,
                  t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D (left, right) with left@right = the factor (flattened to [rows, cols·kh·kw]); a full matrix is split on
    its smaller side with an identity."""
    if full is not None:
        f = full.reshape(full.shape[0], -1)
        eye = torch.eye(min(f.shape), dtype=f.dtype)
        return (f, eye) if f.shape[1] <= f.shape[0] else (eye, f)
    if t is not None:  # Tucker: a [r1, out], b [r2, in], core [r1, r2, kh, kw] -> a.T @ (core ×₂ b)
        right = torch.einsum("ab...,bq->aq...", t, b)
        return a.T, right.reshape(right.shape[0], -1)
    return a, b.reshape(b.shape[0], -1)


def factored(tensors: Tensors, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(up [out, R], down [R, in·kh·kw]) with up @ down = the scaled ΔW, flattened; exact for every additive module."""
    dt = dtype
    t = {k: v.to(dt) for k, v in tensors.items() if k != "alpha"}
    algo = M.algorithm_of(tensors)
    if algo == M.LORA:
        up = t["lora_up.weight"].reshape(t["lora_up.weight"].shape[0], -1)
        down = t["lora_down.weight"]
        if "lora_mid.weight" in t:
            down = torch.einsum("mn...,ni->mi...", t["lora_mid.weight"], down.reshape(down.shape[0], -1))
        pair = (up, down.reshape(down.shape[0], -1))
    elif algo == M.LOHA:
        a1, b1 = _lowrank_pair(None, t["hada_w1_a"], t["hada_w1_b"], t.get("hada_t1"))
        a2, b2 = _lowrank_pair(None, t["hada_w2_a"], t["hada_w2_b"], t.get("hada_t2"))
        pair = (_khatri_rao_rows(a1, a2), _khatri_rao_rows(b1.T, b2.T).T)
    elif algo == M.LOKR:
        a1, b1 = _lowrank_pair(t.get("lokr_w1"), t.get("lokr_w1_a"), t.get("lokr_w1_b"))
        a2, b2 = _lowrank_pair(t.get("lokr_w2"), t.get("lokr_w2_a"), t.get("lokr_w2_b"), t.get("lokr_t2"))
        pair = (torch.kron(a1.contiguous(), a2.contiguous()), torch.kron(b1.contiguous(), b2.contiguous()))
    else:
        d = M.raw_delta(tensors, dtype=dt)
        d = d.reshape(d.shape[0], -1)
        eye = torch.eye(d.shape[1], dtype=dt)
        pair = (d, eye)
    s = M.scale_of(tensors)
    return (pair[0] * s if s != 1 else pair[0]), pair[1]


def effective_delta(tensors: Tensors, base: torch.Tensor | None, name: str = "",
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """W' − W at strength 1 as a dense [out, in·kh·kw] matrix; DoRA modules need `base`."""
    if M.is_dora(tensors):
        if base is None:
            raise ToolkitError(f"module {name}: DoRA needs the base model's weight (give the base checkpoint)")
        w = base.to(dtype)
        d = M.dora_weight(w, tensors, 1.0, name) - w
    else:
        up, down = factored(tensors, dtype)
        d = up @ down
    return d.reshape(d.shape[0], -1)


def exact_rank(tensors: Tensors) -> int:
    """Inner rank of `factored` (an upper bound of ΔW's rank) without building anything."""
    shape = M.natural_shape(tensors)
    n_out, n_in = shape[0], math.prod(shape[1:])
    algo = M.algorithm_of(tensors)
    if algo == M.LORA:
        r = tensors["lora_down.weight"].shape[0]
    elif algo == M.LOHA:
        r = tensors["hada_w1_b"].shape[0] * tensors["hada_w2_b"].shape[0]
    elif algo == M.LOKR:
        r = _inner(tensors, "lokr_w1") * _inner(tensors, "lokr_w2")
    else:
        r = n_in
    return min(r, n_out, n_in)


def _inner(t: Tensors, key: str) -> int:
    if key in t:
        s = t[key].shape
        return min(s[0], math.prod(s[1:]))
    return t[key + "_b"].shape[0]


BaseLookup = Callable[[str], "torch.Tensor | None"]


def needs_lora_form(sd: Mapping[str, torch.Tensor]) -> bool:
    """True when a kohya-named state dict holds modules a plain up/down pair cannot read as they are."""
    return any(k.partition(".")[2] in _NON_PLAIN for k in sd)


_NON_PLAIN = (M.MODULE_SUFFIXES - {"lora_up.weight", "lora_down.weight", "w_norm", "b_norm"}) | {"dora_scale"}


@dataclass
class Conversion:
    """What turning LyCORIS modules into plain LoRAs did: per module (rank kept, ‖error‖², ‖ΔW‖²)."""

    modules: dict[str, tuple[int, float, float]] = field(default_factory=dict)

    @property
    def relative_error(self) -> float:
        """‖ΔW_lora − ΔW‖ / ‖ΔW‖ over every converted module together."""
        total = sum(n for _, _, n in self.modules.values())
        return math.sqrt(sum(e for _, e, _ in self.modules.values()) / total) if total else 0.0

    def worst(self) -> tuple[str, float] | None:
        """The module with the largest relative error."""
        if not self.modules:
            return None
        name = max(self.modules, key=lambda n: self.modules[n][1] / max(self.modules[n][2], 1e-300))
        e, n = self.modules[name][1:]
        return name, math.sqrt(e / n) if n else 0.0


def lora_state_dict(sd: Mapping[str, torch.Tensor], base: BaseLookup | None = None, sdxl: bool = False,
                    source: str = "<memory>", rank: int | None = None) -> tuple[dict[str, torch.Tensor], Conversion]:
    """The state dict with every LoHa/LoKr/Tucker/full/DoRA module replaced by a plain LoRA (float32, alpha =
    rank: the scale is inside the factors): exact (the change's own rank) unless `rank` caps it, then the best
    rank-`rank` approximation. Plain LoRA modules, norms and tensors of no module pass through."""
    groups = M.group_modules(sd)
    out: dict[str, torch.Tensor] = {}
    report = Conversion()
    for name, tensors in groups.items():
        if not (set(tensors) & _NON_PLAIN):
            out.update({f"{name}.{k}": v for k, v in tensors.items()})
            continue
        try:
            M.algorithm_of(tensors, name)
        except ToolkitError as e:
            raise ToolkitError(f"{source}: {e}") from None
        w = base(name) if base is not None and M.is_dora(tensors) else None
        if M.is_dora(tensors) and w is None:
            why = "give the base checkpoint (--sd_model)" if base is None else "the base model has no such layer"
            raise ToolkitError(f"{source}: module {name} is DoRA, whose change depends on the base weights; {why}")
        shape = layer_shape(name, tensors, None if w is None else w.shape, sdxl)
        if "diff_b" in tensors:
            log.warning("%s: module %s: the bias change (diff_b) has no LoRA form and is left out", source, name)
        up, down, err2, norm2 = plain_lora(tensors, w, rank, name)
        k = up.shape[1]
        if len(shape) == 4:
            up, down = up.reshape(shape[0], k, 1, 1), down.reshape(k, *shape[1:])
        out[f"{name}.lora_up.weight"] = up.contiguous()
        out[f"{name}.lora_down.weight"] = down.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(k))
        report.modules[name] = (k, err2, norm2)
    return out, report


def plain_lora(tensors: Tensors, base: torch.Tensor | None = None, rank: int | None = None, name: str = ""
               ) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(up [out,k], down [k, in·kh·kw], ‖error‖², ‖ΔW‖²) of one module's change at strength 1: the exact LoRA
    (k = the change's numerical rank) or, when `rank` is smaller, its best rank-`rank` approximation."""
    if M.is_dora(tensors):
        d = effective_delta(tensors, base, name, torch.float32)
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
    else:
        up, down = factored(tensors, torch.float32)
        if up.shape[1] < min(up.shape[0], down.shape[1]):
            u, s, vh = svd_of_product(up, down)
        else:
            u, s, vh = torch.linalg.svd(up @ down, full_matrices=False)
    s64 = s.double()
    exact = int((s > s[0] * 1e-6).sum()) if s.numel() and s[0] > 0 else 1
    k = max(1, min(exact, rank or exact))
    return u[:, :k] * s[:k], vh[:k], float(s64[k:].pow(2).sum()), float(s64.pow(2).sum())

"""float8 base weights (`--fp8_base`): which tensors are stored as float8_e4m3fn and how they are narrowed.

Weight matrices and conv kernels of the frozen models are stored in fp8 and computed in the mixed-precision dtype
(autocast widens them per layer). Embedding tables, norms and biases (1-D) stay in the compute dtype: an
embedding lookup would return fp8 activations, CPU norms refuse fp8 parameters, and together they are well
under 1% of the weights, so keeping them wide costs nothing and spares the most rounding-sensitive numbers.

Narrowing saturates: e4m3fn has no infinity and its largest finite value is 448, so anything beyond is clamped
to +-448 (a plain cast gives NaN for out-of-range values on some builds; sd-scripts casts unchecked). Inputs
are already refused when they hold NaN/Inf, so nothing non-finite can come out.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

FP8 = getattr(torch, "float8_e4m3fn", None)
FP8_MAX = 448.0


def fp8_supported() -> bool:
    """Whether this torch has float8_e4m3fn (torch >= 2.1)."""
    return FP8 is not None


def stays_wide(key: str, ndim: int) -> bool:
    """Tensors an fp8 model keeps in its compute dtype: 1-D ones (norms, biases) and embedding tables."""
    return ndim < 2 or "embedding" in key


def narrow(t: torch.Tensor, dtype: torch.dtype, key: str = "", inplace: bool = False,
           bounds: tuple[float, float] | None = None) -> torch.Tensor:
    """`t` cast to `dtype`; to fp8 with values beyond +-448 clamped first (in place when `inplace`: the caller's
    scratch buffer). `bounds` = (min, max) of `t` when already known (the loader's finite check computes them).
    Non-float tensors and other targets are a plain cast."""
    if not t.is_floating_point() or t.dtype == dtype:
        return t
    if dtype is FP8 and t.numel():
        low, high = bounds if bounds is not None else (float(v) for v in torch.aminmax(t))
        if high > FP8_MAX or low < -FP8_MAX:
            log.warning("%s: values up to %.4g do not fit float8_e4m3fn; clamped to +-448", key or "a tensor",
                        max(high, -low))
            t = t.clamp_(-FP8_MAX, FP8_MAX) if inplace else t.clamp(-FP8_MAX, FP8_MAX)
    return t.to(dtype)


def part_dtype(key: str, ndim: int, storage: torch.dtype | None, compute: torch.dtype | None) -> torch.dtype | None:
    """The dtype one tensor of a part loads in: `storage` unless that is fp8 and the tensor stays wide."""
    if storage is FP8 and stays_wide(key, ndim):
        return compute
    return storage


def narrow_module(model: torch.nn.Module, compute: torch.dtype) -> torch.nn.Module:
    """Store a loaded model's weights in fp8 parameter by parameter (each wide tensor is freed as its fp8 copy is
    made, so the peak is the model plus one tensor); what stays wide is cast to `compute`."""
    for name, param in model.named_parameters():
        target = part_dtype(name, param.ndim, FP8, compute)
        if param.dtype != target:
            param.data = narrow(param.data, target, name)
    return model


def fp8_weights(model: torch.nn.Module) -> bool:
    """Whether `model` holds fp8 weights (its dtype cannot be changed as a whole)."""
    return FP8 is not None and any(p.dtype == FP8 for p in model.parameters())

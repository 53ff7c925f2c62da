"""What may be read and written: finite values, in the range of the dtype they are cast to. Every reader checks
its tensors with `check_finite` (a damaged input must not flow into a merge, a training run or an image) and every
writer casts through `cast_for_save`, so no file gets an Inf made by a narrowing cast or a NaN made by the math."""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from library.errors import ToolkitError


def check_finite(t: torch.Tensor, path: str | os.PathLike, key: str, bounds: bool = True
                 ) -> tuple[float, float] | None:
    """Refuse a tensor holding NaN or Inf, naming the file and the tensor (a damaged input must not flow into
    a merge, a training run or an image). Returns the tensor's (min, max) when they came with the check (fp8
    narrowing uses them for its range check), else None; `bounds=False` lets the check skip them."""
    if not t.is_floating_point() or t.numel() == 0:
        return None
    bounds = _finite_bounds(t.detach().cpu().reshape(-1), bounds)
    if bounds is None:
        raise ToolkitError(f"{path}: tensor {key} holds NaN or Inf values (a damaged file, or a training run "
                           "that diverged); refusing to use it")
    return None if bounds is True else bounds

_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64",
                torch.float8_e4m3fn: "fp8 (e4m3fn)", torch.float8_e5m2: "fp8 (e5m2)"}


def cast_for_save(t: torch.Tensor, dtype: torch.dtype | None, output: str | os.PathLike, key: str,
                  advice: str = "save as") -> torch.Tensor:
    """`t` as it is written to `output`: cast to `dtype` (floating tensors; None keeps the dtype) after checking
    that every value is finite and fits `dtype`'s range. Every writer goes through here, so no file is ever given
    an Inf made by a narrowing cast, nor a NaN or Inf made by the math before it."""
    if not t.is_floating_point():
        return t
    dtype = dtype or t.dtype
    if t.numel():
        data = t.detach()
        lo, hi = (float(v) for v in torch.aminmax(data if data.element_size() > 1 else data.float()))
        if not (math.isfinite(lo) and math.isfinite(hi)):  # aminmax propagates NaN
            raise ToolkitError(f"{output}: {key} holds NaN or Inf values; refusing to write them (nothing written)")
        top = max(-lo, hi)
        if top > torch.finfo(dtype).max:
            wider = [n for d, n in _DTYPE_NAMES.items() if d.itemsize >= 2 and torch.finfo(d).max >= top
                     and d != torch.float64]
            raise ToolkitError(f"{output}: {key} exceeds the {_DTYPE_NAMES.get(dtype, dtype)} range (max |x| = "
                               f"{top:.6g}); {advice} {' or '.join(wider) or 'fp32'}")
    return t.to(dtype) if t.dtype != dtype else t


class NarrowingError(ToolkitError):
    """A finite stored tensor with values beyond the range of the narrower dtype it was read in (fp32 -> fp16):
    the tools that read to save turn it into their output's "exceeds the fp16 range" line."""

    def __init__(self, path: str | os.PathLike, key: str, dtype: torch.dtype, top: float) -> None:
        name = _DTYPE_NAMES.get(dtype, str(dtype))
        self.key, self.dtype_name, self.top = key, name, top
        super().__init__(f"{path}: tensor {key} exceeds the {name} range (max |x| = {top:.6g}); read it as bf16 or "
                         "fp32")


# bits that are all set in a NaN or Inf, for the float8 types (no min/max kernels for them)
_NON_FINITE_BITS = {torch.float8_e5m2: (torch.int8, 0x7C, 0x7C), torch.float8_e4m3fn: (torch.int8, 0x7F, 0x7F)}


def _finite_bounds(flat: torch.Tensor, bounds: bool = True) -> tuple[float, float] | bool | None:
    """(min, max) of `flat` when every value is finite, None when one is NaN or Inf (True: finite, bounds not
    computed). With `bounds`, one `aminmax` pass: NaN and +-Inf propagate into the min or the max, it allocates
    nothing and reads half-precision directly. Without, a plain sum in the tensor's dtype first (half the time
    of `aminmax`, measured on fp16): a NaN or Inf anywhere makes it non-finite, so a finite sum proves the tensor
    finite; a sum that overflowed, or a real NaN, is settled by `aminmax`. An exponent-bits test for float8."""
    if flat.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        if not bounds and math.isfinite(float(flat.sum())):
            return True
        low, high = (float(v) for v in torch.aminmax(flat))
        return (low, high) if math.isfinite(low) and math.isfinite(high) else None
    if flat.dtype not in _NON_FINITE_BITS:
        return True if bool(torch.isfinite(flat.float()).all()) else None
    int_type, mask, pattern = _NON_FINITE_BITS[flat.dtype]
    bits = flat.view(int_type).numpy()
    step = 1 << 22
    return None if any(np.any((bits[i:i + step] & mask) == pattern) for i in range(0, bits.size, step)) else True

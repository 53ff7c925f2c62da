"""Factor-level adapter math: ΔW of LoRA/LoCon, LoHa and LoKr from their factors, and DoRA's decomposition.

Pure torch and differentiable, so training modules and file tools share one formula. Every function returns the
*raw* product times `scale` (default 1); a file's α/r is applied by the caller (`library.adapters.modules`).
Shapes follow LyCORIS (see docs/lycoris.md): conv factors are flat `[out, in·kh·kw]` unless a Tucker core is given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _finish(w: torch.Tensor, shape: Sequence[int] | None, scale: float) -> torch.Tensor:
    if shape is not None:
        w = w.reshape(*shape)
    return w * scale if scale != 1 else w


def tucker_rebuild(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """W[p,q,k,l] = Σ_ab t[a,b,k,l]·wa[a,p]·wb[b,q]: t [r1,r2,kh,kw], wa [r1,out], wb [r2,in] -> [out,in,kh,kw]."""
    return torch.einsum("ab...,ap,bq->pq...", t, wa, wb)


def lora_delta(up: torch.Tensor, down: torch.Tensor, mid: torch.Tensor | None = None,
               shape: Sequence[int] | None = None, scale: float = 1.0) -> torch.Tensor:
    """up@down (up [out,r(,1,1)], down [r,in(,kh,kw)]), or the Tucker form with `mid` [r,r,kh,kw] and 1x1 factors."""
    up2 = up.reshape(up.shape[0], -1)
    if mid is not None:
        w = tucker_rebuild(mid, up2.T, down.reshape(down.shape[0], -1))
        return _finish(w, shape, scale)
    w = up2 @ down.reshape(down.shape[0], -1)
    if shape is None and down.ndim == 4:
        shape = (up.shape[0], *down.shape[1:])
    return _finish(w, shape, scale)


def loha_delta(w1a: torch.Tensor, w1b: torch.Tensor, w2a: torch.Tensor, w2b: torch.Tensor,
               t1: torch.Tensor | None = None, t2: torch.Tensor | None = None,
               shape: Sequence[int] | None = None, scale: float = 1.0) -> torch.Tensor:
    """(W1a·W1b) ⊙ (W2a·W2b); with Tucker cores t1/t2 the `_a` factors are [r,out] and `_b` [r,in]."""
    if t1 is not None:
        return _finish(tucker_rebuild(t1, w1a, w1b) * tucker_rebuild(t2, w2a, w2b), shape, scale)
    return _finish((w1a @ w1b) * (w2a @ w2b), shape, scale)


def lokr_factors(w1: torch.Tensor | None, w1a: torch.Tensor | None, w1b: torch.Tensor | None,
                 w2: torch.Tensor | None, w2a: torch.Tensor | None, w2b: torch.Tensor | None,
                 t2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(W1, W2) of a LoKr: W1 = w1 or w1a@w1b; W2 = w2, w2a@w2b (flat conv: [out_k, in_n·kh·kw]) or the Tucker
    rebuild with t2 (w2a [r,out_k])."""
    left = w1 if w1 is not None else w1a @ w1b
    if w2 is not None:
        right = w2
    elif t2 is not None:
        right = tucker_rebuild(t2, w2a, w2b)
    else:  # flat conv: w2b [r, in_n·kh·kw] (or [r, in_n, kh, kw]); the caller's shape restores the kernel
        right = w2a @ w2b.reshape(w2b.shape[0], -1)
    return left, right


def lokr_delta(w1: torch.Tensor | None, w1a: torch.Tensor | None, w1b: torch.Tensor | None,
               w2: torch.Tensor | None, w2a: torch.Tensor | None, w2b: torch.Tensor | None,
               t2: torch.Tensor | None = None, shape: Sequence[int] | None = None,
               scale: float = 1.0) -> torch.Tensor:
    """kron(W1, W2) of the factors (see `lokr_factors`), shaped `shape`."""
    left, right = lokr_factors(w1, w1a, w1b, w2, w2a, w2b, t2)
    while left.ndim < right.ndim:
        left = left.unsqueeze(-1)
    return _finish(torch.kron(left, right.contiguous()), shape, scale)


def kron_linear(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """x @ kron(W1, W2)ᵀ without building the Kronecker product: x [..., in_m·in_n] viewed [..., in_m, in_n],
    W2 applied to the last axis, W1 to the one before (cost ~in_m·in_n·out_k + out_l·in_m·out_k per row)."""
    in_m, in_n = w1.shape[1], w2.shape[1]
    h = x.reshape(*x.shape[:-1], in_m, in_n) @ w2.transpose(0, 1)  # [..., in_m, out_k]
    h = w1 @ h  # [..., out_l, out_k]
    return h.reshape(*x.shape[:-1], -1)


def kron_conv2d(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, stride: Sequence[int] | int = 1,
                padding: Sequence[int] | int | str = 0, dilation: Sequence[int] | int = 1) -> torch.Tensor:
    """conv2d(x, kron(W1, W2)) without building the kernel: W2 [out_k, in_n, kh, kw] convolves each of the in_m
    channel groups, W1 [out_l, in_m] then mixes the groups (groups=1 convolutions only)."""
    n, _, h, w = x.shape
    in_m, in_n = w1.shape[1], w2.shape[1]
    y = torch.nn.functional.conv2d(x.reshape(n * in_m, in_n, h, w), w2, None, stride, padding, dilation)
    y = y.reshape(n, in_m, *y.shape[1:])  # [n, in_m, out_k, h', w']
    y = torch.einsum("am,nm...->na...", w1, y)  # [n, out_l, out_k, h', w']
    return y.reshape(n, -1, *y.shape[3:])


def lokr_factorization(dim: int, factor: int = -1) -> tuple[int, int]:
    """(m, n) with m ≤ n and m·n = dim: `factor` and dim/factor when factor divides dim, else the most balanced
    split whose smaller side does not exceed `factor` (−1: no limit), as LyCORIS' `factorization`."""
    if factor > 0 and dim % factor == 0:
        return min(factor, dim // factor), max(factor, dim // factor)
    limit = dim if factor < 0 else factor
    m, n = 1, dim
    while m < n:
        new_m = m + 1
        while dim % new_m:
            new_m += 1
        new_n = dim // new_m
        if new_m + new_n > m + n or new_m > limit:
            break
        m, n = new_m, new_n
    return min(m, n), max(m, n)


def _norm(w: torch.Tensor, out_axis: bool) -> torch.Tensor:
    """L2 norm of every output row ([out,1,...]) or input column ([1,in,...]) of `w`."""
    rest = [1] * (w.ndim - 1)
    if out_axis:
        return w.reshape(w.shape[0], -1).norm(dim=1).reshape(w.shape[0], *rest)
    n = w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)
    return n.reshape(w.shape[1], *rest).transpose(0, 1)


def dora_magnitude(weight: torch.Tensor, out_axis: bool) -> torch.Tensor:
    """DoRA's initial magnitude m = ‖W‖ per output row [out,1(,1,1)] or per input column [1,in(,1,1)]."""
    return _norm(weight, out_axis)


def weight_decompose(w_plus_delta: torch.Tensor, magnitude: torch.Tensor, out_axis: bool,
                     multiplier: float = 1.0) -> torch.Tensor:
    """DoRA weight V·(s·(m/n − 1) + 1), n = ‖V‖ (+eps) along the axis: m·V/n at s = 1, V at s = 0 (LyCORIS ≥ 3.1).

    `magnitude` may be stored [out], [out,1(,1,1)] or [1,in(,1,1)]; it is reshaped to broadcast along the axis.
    """
    v = w_plus_delta
    if out_axis:
        m = magnitude.reshape(v.shape[0], *[1] * (v.ndim - 1))
    else:
        m = magnitude.reshape(1, v.shape[1], *[1] * (v.ndim - 2))
    n = _norm(v, out_axis) + torch.finfo(v.dtype).eps
    ratio = m.to(v.dtype) / n
    if multiplier != 1:
        ratio = multiplier * (ratio - 1) + 1
    return v * ratio

"""float8 base weights (`--fp8_base`): which tensors are stored as float8_e4m3fn and how they are narrowed.

Weight matrices and conv kernels of the frozen models are stored in fp8 and computed in the mixed-precision dtype
(autocast widens them per layer). Embedding tables, norms and biases (1-D) stay in the compute dtype: an
embedding lookup would return fp8 activations, CPU norms refuse fp8 parameters, and together they are well
under 1% of the weights, so keeping them wide costs nothing and spares the most rounding-sensitive numbers.

Narrowing saturates: e4m3fn has no infinity and its largest finite value is 448, so anything beyond is clamped
to +-448 (a plain cast gives NaN for out-of-range values on some builds; sd-scripts casts unchecked). Inputs
are already refused when they hold NaN/Inf, so nothing non-finite can come out.

Computing: `fast_forward` gives each fp8 Linear/Conv2d a forward that widens its weight right before the matmul
and keeps only the fp8 weight for backward (autocast's own cast is saved by the matmul until backward, a wide
copy of every layer of a checkpointed block at once). On CPU the widening is `widen`'s bit-exact integer route:
torch's own fp8 cast converts element by element (measured on 2 cores, a 5120x1280 weight to bf16: 25 ms,
against about 6 ms here), which made an fp8 SDXL step 3.5x slower than a bf16 one.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

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
    return fast_forward(model)


def fp8_weights(model: torch.nn.Module) -> bool:
    """Whether `model` holds fp8 weights (its dtype cannot be changed as a whole)."""
    return FP8 is not None and any(p.dtype == FP8 for p in model.parameters())


CHUNK = 1 << 20  # elements widened per pass: the scratch stays small, the passes long enough to stay vectorised
_HALF_MASK = -16512  # 0xBF80 as int16: sign, then the 7 exponent-and-mantissa bits, of an fp8 shifted left by 7
_HALF_SCALE = torch.tensor(256.0)  # undoes the 2^-8 of those bits read as fp16 (a float32 0-d tensor: made once)
_scratch: dict[tuple[str, torch.dtype], torch.Tensor] = {}


def _buffer(name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A reused flat buffer: a widened weight lives only until its matmul, so one per dtype serves every layer
    (a fresh allocation that size page-faults every time: measured 2x the widening itself)."""
    buf = _scratch.get((name, dtype))
    if buf is None or buf.numel() < numel:
        buf = _scratch[name, dtype] = torch.empty(numel, dtype=dtype)
    return buf[:numel]


def widen(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An fp8 (e4m3fn) `weight` in `dtype`, exactly as `weight.to(dtype)`. On CPU the result is a reused
    scratch buffer, valid until the next call: use it at once. The bits of an e4m3fn placed in an fp16 (sign at
    bit 15, the rest shifted left by 7) are its value times 2^-8, subnormals included, and the hardware's fp16
    conversion undoes the scale exactly; NaN codes (which loading refuses) would come out finite."""
    if weight.device.type != "cpu" or dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return weight.to(dtype)
    src = weight.contiguous().view(torch.int8).view(-1)
    out = _buffer("out", src.numel(), dtype)
    for start in range(0, src.numel(), CHUNK):
        end = min(src.numel(), start + CHUNK)
        bits = _buffer("bits", end - start, torch.int16)
        bits.copy_(src[start:end])  # sign-extends: bit 15 holds the sign
        half = bits.bitwise_left_shift_(7).bitwise_and_(_HALF_MASK).view(torch.float16)
        if dtype is torch.bfloat16:  # fp16 -> bf16 has no fast kernel; fp16 -> fp32 -> bf16 has
            wide = _buffer("f32", end - start, torch.float32)
            torch.mul(half, _HALF_SCALE, out=wide)
            out[start:end].copy_(wide)
        else:
            torch.mul(half, _HALF_SCALE, out=out[start:end])
    return out.view(weight.shape)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """What an fp8 layer computes in: the autocast dtype where autocast is on, else the input's dtype."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _bias_grad(grad: torch.Tensor, bias: torch.Tensor | None, needed: bool, channel_dim: int) -> torch.Tensor | None:
    if bias is None or not needed:
        return None
    return grad.sum(dim=[d for d in range(grad.ndim) if d != channel_dim % grad.ndim]).to(bias.dtype)


class _Fp8Linear(torch.autograd.Function):
    """F.linear with an fp8 weight widened in forward and again in backward: only the fp8 weight is saved."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,  # noqa: ANN001
                dtype: torch.dtype) -> torch.Tensor:
        ctx.save_for_backward(weight, bias)
        ctx.dtype = dtype
        return F.linear(x.to(dtype), widen(weight, dtype), None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        weight, bias = ctx.saved_tensors
        grad = grad.to(ctx.dtype)
        grad_x = grad @ widen(weight, ctx.dtype) if ctx.needs_input_grad[0] else None
        return grad_x, None, _bias_grad(grad, bias, ctx.needs_input_grad[2], -1), None


class _Fp8Conv2d(torch.autograd.Function):
    """F.conv2d with an fp8 weight widened in forward and again in backward: only the fp8 weight is saved."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conf: tuple,  # noqa: ANN001
                dtype: torch.dtype) -> torch.Tensor:
        ctx.save_for_backward(weight, bias)
        ctx.dtype, ctx.conf, ctx.shape = dtype, conf, x.shape
        return F.conv2d(x.to(dtype), widen(weight, dtype), None if bias is None else bias.to(dtype), *conf)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        weight, bias = ctx.saved_tensors
        grad = grad.to(ctx.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(ctx.shape, widen(weight, ctx.dtype), grad, *ctx.conf)
        return grad_x, None, _bias_grad(grad, bias, ctx.needs_input_grad[2], 1), None, None


def _linear_forward(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return _Fp8Linear.apply(x, module.weight, module.bias, _compute_dtype(x))


def _conv_forward(module: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    conf = (module.stride, module.padding, module.dilation, module.groups)
    return _Fp8Conv2d.apply(x, module.weight, module.bias, conf, _compute_dtype(x))


def fast_forward(model: torch.nn.Module) -> torch.nn.Module:
    """Give every Linear and zero-padded Conv2d of `model` that holds an fp8 weight the widening forward above
    (an instance attribute: the class, its keys and what a LoRA wraps stay as they are). Call it before a
    network wraps the layers' forwards."""
    for module in model.modules():
        if getattr(module, "weight", None) is None or module.weight.dtype is not FP8 or "forward" in vars(module):
            continue
        if type(module) is torch.nn.Linear:
            module.forward = functools.partial(_linear_forward, module)
        elif (type(module) is torch.nn.Conv2d and module.padding_mode == "zeros"
              and not isinstance(module.padding, str)):
            module.forward = functools.partial(_conv_forward, module)
    return model

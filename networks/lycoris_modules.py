"""The modules of networks.lycoris, one per wrapped Linear/Conv2d: LoRA/LoCon (optionally Tucker), LoHa and LoKr
with optional DoRA, trained with LyCORIS' key names and shapes, plus read-only modules for full `diff` and norm
files. ΔW always comes from `library.adapters`; the network (targeting, names, files) is networks/lycoris.py.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from library import adapters
from library.options.lycoris_args import LycorisArgs
from networks.lora import LoRAModule

log = logging.getLogger(__name__)
# weights with fewer elements are not recomputed in backward (every SD layer but tiny test models' has more)
RECOMPUTE_MIN_NUMEL = 1 << 16
# base weights the merged forward may add ΔW to (others, e.g. fp8 storage, go through the layer's own forward)
_PLAIN_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class AdapterModule(nn.Module):
    """One LyCORIS module on one Linear/Conv2d: parameters under the file's key names, alpha, optional DoRA
    magnitude; the forward adds `multiplier·ΔW` (or applies the DoRA weight)."""

    algo = ""
    # use_scalar: the factor initialised to zero otherwise, and the one the scalar is folded into in files
    zeroed: tuple[str, ...] = ()
    folded: tuple[str, ...] = ()
    # recompute ΔW in backward instead of keeping its intermediate products (LoHa keeps two weight-sized ones)
    recompute_delta = False

    def __init__(self, lora_name: str, org_module: nn.Module, multiplier: float, dim: int, alpha: float | None,
                 args: LycorisArgs, shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
        super().__init__()
        self._shapes = dict(shapes or {})  # a file's tensor shapes, when the module is built to load that file
        self.lora_name, self.lora_dim, self.multiplier = lora_name, int(dim), multiplier
        self.org_module = [org_module]  # a list keeps it out of this module's parameters and state dict
        self.org_forward = None
        weight = org_module.weight
        self.shape = tuple(weight.shape)
        self.is_conv = isinstance(org_module, nn.Conv2d)
        self.kernel = tuple(org_module.kernel_size) if self.is_conv else ()
        self.dropout, self.rank_dropout, self.module_dropout = args.dropout, args.rank_dropout, args.module_dropout
        self.rank_dropout_scale = args.rank_dropout_scale
        self.bypass = args.bypass_mode
        self.all_full = self._build(org_module, args)
        self.scalar = None
        if args.use_scalar and not self._shapes:  # LyCORIS: ΔW·scalar, scalar from 0, every factor non-zero
            self.scalar = nn.Parameter(torch.tensor(0.0))
            params = dict(self.named_parameters())
            for key in self.zeroed:
                if key in params:
                    nn.init.kaiming_uniform_(params[key], a=math.sqrt(5))
            self.register_state_dict_post_hook(_fold_scalar)
            self.register_load_state_dict_pre_hook(_scalar_one_when_folded)
        if alpha is None or float(alpha) == 0:
            alpha = self.lora_dim
        alpha = float(alpha)
        r_factor = math.sqrt(self.lora_dim) if args.rs_lora else self.lora_dim
        if self.all_full:  # LoKr with no low-rank factor: scale 1, alpha written as the dim (as LyCORIS does)
            alpha, r_factor = float(self.lora_dim), float(self.lora_dim)
        self.scale = alpha / r_factor
        self.register_buffer("alpha", torch.tensor(alpha * self.lora_dim / r_factor))
        self.out_axis = args.wd_on_output
        if args.dora_wd and "dora_scale" in self._shapes:
            self.dora_scale = nn.Parameter(torch.ones(self._shapes["dora_scale"]))
        elif args.dora_wd:
            self.dora_scale = nn.Parameter(adapters.dora_magnitude(weight.detach().float(), self.out_axis))
        else:
            self.dora_scale = None

    @property
    def is_kxk(self) -> bool:
        return self.is_conv and self.kernel != (1, 1)

    def _build(self, org_module: nn.Module, args: LycorisArgs) -> bool:
        """Create the factors; True when no factor is low-rank (scale 1)."""
        raise NotImplementedError

    def raw_delta(self) -> torch.Tensor:
        """Unscaled ΔW shaped like the wrapped weight (differentiable), from library.adapters."""
        raise NotImplementedError

    # --- application ---------------------------------------------------------------------------------------
    # the wrapped layer's forward is routed through this module exactly as networks.lora does it
    apply_to = LoRAModule.apply_to
    remove = LoRAModule.remove

    def _owns_layer(self) -> bool:
        """Whether the wrapped forward is the layer's own (no other network chained before this one), so the
        merged weight can be used directly."""
        org = self.org_module[0]
        return (not self.bypass and type(org) in (nn.Linear, nn.Conv2d) and org.weight.dtype in _PLAIN_DTYPES
                and getattr(self.org_forward, "__func__", None) is type(org).forward)

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not torch.is_autocast_enabled(x.device.type) and weight.dtype != x.dtype:
            weight = weight.to(x.dtype)
            bias = None if bias is None else bias.to(x.dtype)
        if not self.is_conv:
            return F.linear(x, weight, bias)
        org = self.org_module[0]
        return F.conv2d(x, weight, bias, org.stride, org.padding, org.dilation, org.groups)

    def _row_mask(self, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """rank_dropout: keep each output row of ΔW with probability 1-p (LyCORIS' rebuild-mode meaning)."""
        keep = (torch.rand(n, device=device) > self.rank_dropout).to(dtype)
        if self.rank_dropout_scale:
            keep = keep / keep.mean().clamp(min=1e-8)
        return keep

    def _recomputed(self, fn, *args):  # noqa: ANN001, ANN202
        """fn(*args), its intermediates recomputed in backward while training (memory of one weight, not three);
        small weights skip it, where checkpointing's bookkeeping costs more than the memory it saves."""
        if self.training and torch.is_grad_enabled() and math.prod(self.shape) >= RECOMPUTE_MIN_NUMEL:
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def delta(self) -> torch.Tensor:
        """(α/r)·ΔW, with the rank-dropout row mask while training."""
        d = self._recomputed(self.raw_delta) if self.recompute_delta else self.raw_delta()
        if self.training and self.rank_dropout:
            d = d * self._row_mask(d.shape[0], d.device, d.dtype).reshape(-1, *[1] * (d.ndim - 1))
        return d * self.scale if self.scalar is None else d * (self.scale * self.scalar)

    def dora_weight(self, delta: torch.Tensor) -> torch.Tensor:
        w = self.org_module[0].weight.detach()
        return adapters.weight_decompose(w.to(delta.dtype) + delta, self.dora_scale, self.out_axis, self.multiplier)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.training and self.module_dropout and torch.rand(1).item() < self.module_dropout:
            return self.org_forward(x, *args, **kwargs)
        if self.dora_scale is None and self.multiplier == 0:
            return self.org_forward(x, *args, **kwargs)
        org = self.org_module[0]
        if self.dora_scale is not None:
            # kept for backward, not recomputed: measured on real-shape SD1.5, recomputing cost 1.7x the step time
            # for 40% less memory; --gradient_checkpointing recomputes whole U-Net blocks, these included
            new = self.dora_weight(self.delta())
            if self._owns_layer():
                return self._op(x, new, org.bias)
            return self.org_forward(x, *args, **kwargs) + self._op(x, new - org.weight.detach().to(new.dtype), None)
        return self._additive_forward(x, *args, **kwargs)

    def _additive_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        delta = self.delta() * self.multiplier
        if self.training and self.dropout:
            out = self.org_forward(x, *args, **kwargs)
            return out + F.dropout(self._op(x, delta, None), p=self.dropout).to(out.dtype)
        if self._owns_layer():  # one matmul/conv with W + ΔW instead of two
            org = self.org_module[0]
            return self._op(x, org.weight.detach() + delta.to(torch.promote_types(delta.dtype, org.weight.dtype)),
                            org.bias)
        out = self.org_forward(x, *args, **kwargs)
        return out + self._op(x, delta, None).to(out.dtype)

    # --- merging and regularisation -------------------------------------------------------------------------
    def file_tensors(self, sd: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """This module's tensors as a file holds them (`sd`: another file's, for merge_to)."""
        return dict(sd) if sd is not None else {k: v.detach() for k, v in self.state_dict().items()}

    @torch.no_grad()
    def merge_to_org(self, sd: Mapping[str, torch.Tensor] | None = None, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> None:
        """Bake the module into the wrapped weight (float32 math through library.adapters, cast back)."""
        org = self.org_module[0]
        tensors = {k: v.float().to(org.weight.device) for k, v in self.file_tensors(sd).items()}
        new = adapters.apply_delta(org.weight.float(), tensors, self.multiplier, self.lora_name)
        org.weight.copy_(new.to(dtype or org.weight.dtype))
        if device is not None:
            org.to(device)

    @torch.no_grad()
    def apply_max_norm_(self, max_norm: float) -> tuple[bool, float]:
        """Scale the factors so ‖(α/r)·ΔW‖ ≤ max_norm (each of the n factors by ratio^(1/n))."""
        norm = float((self.raw_delta().float() * self.scale * (1 if self.scalar is None else self.scalar)).norm())
        floor = max(norm, max_norm / 2)  # LyCORIS' rule: clamp(norm, min=max/2), then clamp(max=max_norm)
        ratio = min(floor, max_norm) / floor
        if ratio >= 1:
            return False, norm
        if self.scalar is not None:
            self.scalar.mul_(ratio)
            return True, norm * ratio
        factors = self.scaled_factors()
        for p in factors:
            p.mul_(ratio ** (1 / len(factors)))
        return True, norm * ratio

    def scaled_factors(self) -> list[torch.Tensor]:
        """The tensors whose product is ΔW (max-norm scales each by the same root)."""
        raise NotImplementedError


class LoConModule(AdapterModule):
    """LoRA/LoCon: up·down (Tucker: up·mid·down for kxk convs); forward x→down→(mid)→up, no full ΔW built."""

    algo = "lora"
    zeroed = folded = ("lora_up.weight",)

    def _build(self, org: nn.Module, args: LycorisArgs) -> bool:
        dim = self.lora_dim
        self.tucker = False
        self.lora_mid = None
        if self.is_conv:
            if args.use_tucker and self.is_kxk:
                self.lora_down = nn.Conv2d(org.in_channels, dim, 1, bias=False)
                self.lora_mid = nn.Conv2d(dim, dim, org.kernel_size, org.stride, org.padding, bias=False)
                self.tucker = True
            else:
                self.lora_down = nn.Conv2d(org.in_channels, dim, org.kernel_size, org.stride, org.padding, bias=False)
            self.lora_up = nn.Conv2d(dim, org.out_channels, 1, bias=False)
        else:
            self.lora_down = nn.Linear(org.in_features, dim, bias=False)
            self.lora_up = nn.Linear(dim, org.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        if self.tucker:
            nn.init.kaiming_uniform_(self.lora_mid.weight, a=math.sqrt(5))
        return False

    def raw_delta(self) -> torch.Tensor:
        mid = None if self.lora_mid is None else self.lora_mid.weight
        return adapters.lora_delta(self.lora_up.weight, self.lora_down.weight, mid, shape=self.shape)

    def scaled_factors(self) -> list[torch.Tensor]:
        return [m.weight for m in (self.lora_down, self.lora_mid, self.lora_up) if m is not None]

    def _additive_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.org_forward(x, *args, **kwargs)
        w = self.lora_down.weight
        h = x if x.dtype == w.dtype or torch.is_autocast_enabled(x.device.type) else x.to(w.dtype)
        if self.is_conv:
            h = self.lora_down(h)
            if self.lora_mid is not None:
                h = self.lora_mid(h)
            h = self.lora_up(h)
        else:
            h = self.lora_up(self.lora_down(h))
        scale = self.scale * self.multiplier
        if self.scalar is not None:
            scale = scale * self.scalar
        if self.training and self.rank_dropout:  # rows of ΔW are output channels of its product with x
            mask = self._row_mask(h.shape[1] if self.is_conv else h.shape[-1], h.device, h.dtype)
            h = h * (mask.reshape(1, -1, 1, 1) if self.is_conv else mask)
        if self.training and self.dropout:
            h = F.dropout(h, p=self.dropout)
        return out + (h * scale).to(out.dtype)


class LoHaModule(AdapterModule):
    """LoHa: (W1a·W1b) ⊙ (W2a·W2b); Tucker cores hada_t1/t2 for kxk convs with use_tucker."""

    algo = "loha"
    zeroed, folded = ("hada_w2_a",), ("hada_w1_a",)
    recompute_delta = True

    def _build(self, org: nn.Module, args: LycorisArgs) -> bool:
        dim, out_dim, in_dim = self.lora_dim, self.shape[0], self.shape[1]
        self.tucker = bool(args.use_tucker and self.is_kxk)
        if self.tucker:
            self.hada_t1 = nn.Parameter(torch.empty(dim, dim, *self.kernel))
            self.hada_w1_a = nn.Parameter(torch.empty(dim, out_dim))
            self.hada_w1_b = nn.Parameter(torch.empty(dim, in_dim))
            self.hada_t2 = nn.Parameter(torch.empty(dim, dim, *self.kernel))
            self.hada_w2_a = nn.Parameter(torch.empty(dim, out_dim))
            self.hada_w2_b = nn.Parameter(torch.empty(dim, in_dim))
            nn.init.normal_(self.hada_t1, std=0.1)
            nn.init.normal_(self.hada_t2, std=0.1)
        else:
            flat_in = in_dim * math.prod(self.kernel) if self.is_conv else in_dim
            self.hada_w1_a = nn.Parameter(torch.empty(out_dim, dim))
            self.hada_w1_b = nn.Parameter(torch.empty(dim, flat_in))
            self.hada_w2_a = nn.Parameter(torch.empty(out_dim, dim))
            self.hada_w2_b = nn.Parameter(torch.empty(dim, flat_in))
            self.hada_t1 = self.hada_t2 = None
        nn.init.normal_(self.hada_w1_b, std=1)
        nn.init.normal_(self.hada_w1_a, std=0.1)
        nn.init.normal_(self.hada_w2_b, std=1)
        nn.init.zeros_(self.hada_w2_a)
        return False

    def raw_delta(self) -> torch.Tensor:
        return adapters.loha_delta(self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b, self.hada_t1,
                                   self.hada_t2, shape=self.shape)

    def scaled_factors(self) -> list[torch.Tensor]:
        return [p for p in (self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b, self.hada_t1,
                            self.hada_t2) if p is not None]


class LoKrModule(AdapterModule):
    """LoKr: kron(W1, W2), W1 full (or low-rank with decompose_both), W2 low-rank unless rank ≥ its size/2 or
    full_matrix; Tucker core lokr_t2 for kxk convs with use_tucker."""

    algo = "lokr"
    zeroed, folded = ("lokr_w2", "lokr_w2_b"), ("lokr_w1", "lokr_w1_a")

    def _build(self, org: nn.Module, args: LycorisArgs) -> bool:
        dim, out_dim, in_dim = self.lora_dim, self.shape[0], self.shape[1]
        self.tucker = bool(args.use_tucker and self.is_kxk)
        for key in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"):
            setattr(self, key, None)
        if self._shapes:  # the structure of a file's module
            sh = self._shapes
            out_l, in_m = sh["lokr_w1"] if "lokr_w1" in sh else (sh["lokr_w1_a"][0], sh["lokr_w1_b"][1])
            out_k, in_n = out_dim // out_l, in_dim // in_m
            use_w1, use_w2 = "lokr_w1" in sh, "lokr_w2" in sh
        else:
            in_m, in_n = adapters.lokr_factorization(in_dim, args.factor)
            out_l, out_k = adapters.lokr_factorization(out_dim, args.factor)
            if args.unbalanced_factorization:
                out_l, out_k = out_k, out_l
            use_w1 = not (args.decompose_both and dim < max(out_l, in_m) / 2 and not args.full_matrix)
            use_w2 = dim >= max(out_k, in_n) / 2 or args.full_matrix
        if use_w1:
            self.lokr_w1 = nn.Parameter(torch.empty(out_l, in_m))
            nn.init.kaiming_uniform_(self.lokr_w1, a=math.sqrt(5))
        else:
            self.lokr_w1_a = nn.Parameter(torch.empty(out_l, dim))
            self.lokr_w1_b = nn.Parameter(torch.empty(dim, in_m))
            nn.init.kaiming_uniform_(self.lokr_w1_a, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.lokr_w1_b, a=math.sqrt(5))
        if use_w2:
            if not args.full_matrix:
                log.debug("%s: rank %d >= half of W2 (%dx%d): W2 is a full matrix", self.lora_name, dim, out_k, in_n)
            self.lokr_w2 = nn.Parameter(torch.zeros(out_k, in_n, *self.kernel))
        elif self.tucker:
            self.lokr_t2 = nn.Parameter(torch.empty(dim, dim, *self.kernel))
            self.lokr_w2_a = nn.Parameter(torch.empty(dim, out_k))
            self.lokr_w2_b = nn.Parameter(torch.zeros(dim, in_n))
            nn.init.kaiming_uniform_(self.lokr_t2, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.lokr_w2_a, a=math.sqrt(5))
        else:
            self.lokr_w2_a = nn.Parameter(torch.empty(out_k, dim))
            self.lokr_w2_b = nn.Parameter(torch.zeros(dim, in_n * math.prod(self.kernel)))
            nn.init.kaiming_uniform_(self.lokr_w2_a, a=math.sqrt(5))
        return use_w1 and use_w2

    def raw_delta(self) -> torch.Tensor:
        return adapters.lokr_delta(self.lokr_w1, self.lokr_w1_a, self.lokr_w1_b, self.lokr_w2, self.lokr_w2_a,
                                   self.lokr_w2_b, self.lokr_t2, shape=self.shape)

    def kron_parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W1 [out_l, in_m], W2 [out_k, in_n(, kh, kw)]): ΔW = kron(W1, W2) unscaled."""
        w1, w2 = adapters.lokr_factors(self.lokr_w1, self.lokr_w1_a, self.lokr_w1_b, self.lokr_w2, self.lokr_w2_a,
                                       self.lokr_w2_b, self.lokr_t2)
        if self.is_conv:
            w2 = w2.reshape(w2.shape[0], self.shape[1] // w1.shape[1], *self.kernel)
        return w1, w2

    def _additive_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """org(x) + s·kron(W1, W2)·x with ΔW never built (LyCORIS' bypass form): no weight-sized temporaries and
        no weight gradient of the wrapped layer, a fraction of a dense matmul for the adapter."""
        org = self.org_module[0]
        if self.is_conv and org.groups != 1:
            return super()._additive_forward(x, *args, **kwargs)
        out = self.org_forward(x, *args, **kwargs)
        w1, w2 = self.kron_parts()
        h = x if x.dtype == w1.dtype or torch.is_autocast_enabled(x.device.type) else x.to(w1.dtype)
        if self.is_conv:
            h = adapters.kron_conv2d(h, w1, w2, org.stride, org.padding, org.dilation)
        else:
            h = adapters.kron_linear(h, w1, w2)
        if self.training and self.rank_dropout:  # rows of ΔW are output channels of its product with x
            mask = self._row_mask(h.shape[1] if self.is_conv else h.shape[-1], h.device, h.dtype)
            h = h * (mask.reshape(1, -1, 1, 1) if self.is_conv else mask)
        if self.training and self.dropout:
            h = F.dropout(h, p=self.dropout)
        scale = self.scale * self.multiplier
        return out + (h * (scale if self.scalar is None else scale * self.scalar)).to(out.dtype)

    def scaled_factors(self) -> list[torch.Tensor]:
        return [p for p in (self.lokr_w1, self.lokr_w1_a, self.lokr_w1_b, self.lokr_w2, self.lokr_w2_a,
                            self.lokr_w2_b, self.lokr_t2) if p is not None]


def _fold_scalar(module: AdapterModule, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """use_scalar: files hold the scalar folded into one factor, as LyCORIS writes them (no `scalar` key)."""
    scalar = state_dict.pop(prefix + "scalar")
    key = next(prefix + k for k in module.folded if prefix + k in state_dict)
    state_dict[key] = state_dict[key] * scalar


def _scalar_one_when_folded(module: AdapterModule, state_dict: dict, prefix: str, *args) -> None:  # noqa: ANN002
    """Loading a file (scalar folded in): the scalar becomes 1, as LyCORIS' load hook does."""
    state_dict.setdefault(prefix + "scalar", torch.ones(()))


MODULES = {"lora": LoConModule, "locon": LoConModule, "loha": LoHaModule, "lokr": LoKrModule}


class FileModule(nn.Module):
    """Inference-only module for file kinds not trained here (full `diff`, norm `w_norm`): W' from
    library.adapters, applied to Linear, Conv2d, LayerNorm and GroupNorm layers."""

    algo = "file"

    def __init__(self, lora_name: str, org_module: nn.Module, multiplier: float,
                 tensors: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.lora_name, self.multiplier = lora_name, multiplier
        self.org_module = [org_module]
        self.org_forward = None
        self.lora_dim = 0
        for key, value in tensors.items():
            self.register_buffer(key, torch.zeros_like(value, dtype=torch.float32))
        self.shape = tuple(org_module.weight.shape)

    apply_to = AdapterModule.apply_to
    remove = AdapterModule.remove
    file_tensors = AdapterModule.file_tensors

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        org = self.org_module[0]
        if self.multiplier == 0:
            return self.org_forward(x, *args, **kwargs)
        tensors = self.file_tensors()
        weight = adapters.apply_delta(org.weight.detach().float(), tensors, self.multiplier, self.lora_name)
        bias = org.bias.detach().float() if org.bias is not None else None
        delta_b = adapters.bias_delta(tensors)
        if delta_b is not None:
            bias = self.multiplier * delta_b if bias is None else bias + self.multiplier * delta_b
        weight = weight.to(x.dtype)
        bias = None if bias is None else bias.to(x.dtype)
        if isinstance(org, nn.LayerNorm):
            return F.layer_norm(x, org.normalized_shape, weight, bias, org.eps)
        if isinstance(org, nn.GroupNorm):
            return F.group_norm(x, org.num_groups, weight, bias, org.eps)
        if isinstance(org, nn.Conv2d):
            return F.conv2d(x, weight, bias, org.stride, org.padding, org.dilation, org.groups)
        return F.linear(x, weight, bias)

    @torch.no_grad()
    def merge_to_org(self, sd: Mapping[str, torch.Tensor] | None = None, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> None:
        org = self.org_module[0]
        tensors = {k: v.float().to(org.weight.device) for k, v in self.file_tensors(sd).items()}
        org.weight.copy_(adapters.apply_delta(org.weight.float(), tensors, self.multiplier, self.lora_name)
                         .to(dtype or org.weight.dtype))
        delta_b = adapters.bias_delta(tensors)
        if delta_b is not None and org.bias is not None:
            org.bias.copy_((org.bias.float() + self.multiplier * delta_b).to(dtype or org.bias.dtype))
        if device is not None:
            org.to(device)



def module_from_tensors(name: str, layer: nn.Module, tensors: Mapping[str, torch.Tensor],
                        multiplier: float = 1.0) -> AdapterModule | FileModule:
    """A module shaped like one module of a file (any algorithm library.adapters reads); weights not loaded."""
    algo = adapters.algorithm_of(tensors, name)
    if algo in (adapters.FULL, adapters.NORM) or not isinstance(layer, (nn.Linear, nn.Conv2d)):
        return FileModule(name, layer, multiplier, tensors)
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    dora = "dora_scale" in tensors
    out_axis = adapters.dora_out_axis(tensors["dora_scale"], tuple(layer.weight.shape), name) if dora else False
    args = LycorisArgs(algo=algo, use_tucker=any(k in tensors for k in ("lora_mid.weight", "hada_t1", "lokr_t2")),
                       dora_wd=dora, wd_on_output=out_axis)
    rank = adapters.rank_of(tensors)
    alpha = adapters.alpha_of(tensors)
    module = MODULES[algo](name, layer, multiplier, rank or max(1, int(alpha or 1)), alpha, args, shapes)
    module.scale = adapters.scale_of(tensors)  # the file's scale rules (missing alpha, all-full LoKr, rs_lora)
    return module

"""DyLoRA for SD1/SD2/SDXL: one training run gives usable LoRAs at every rank step (`unit`, 2·unit, … dim).

Each training step draws one unit index i (uniform over dim/unit) for the whole network; every module then
multiplies with its first k = (i+1)·unit ranks only, and only the newest unit (ranks [i·unit, k)) gets
gradients (the frozen mode of the DyLoRA paper). The scale stays alpha/dim at every k, so the rank-k LoRA is
the rank-(k-unit) LoRA plus one more trained unit: loss falls as k grows, and a split file
(networks/extract_lora_from_dylora.py) holding the first k ranks with alpha·k/dim is exactly what training
optimised at rank k. Files record this as `ss_dylora_rank_scale=constant`.

Differences, on purpose: sd-scripts multiplies with all dim ranks in every step, scaled by
(alpha/dim)·sqrt(dim/k), so its truncations are never trained as such; the paper scales a rank-k truncation
by alpha/k, which shrinks the trained lower units each time a unit is added. Out of training (eval mode) the
full rank is used, deterministically (sd-scripts draws a random rank there too), so samples taken during
training match the saved file. The multiplier is honoured (sd-scripts ignores it). The saved file is an
ordinary LoRA (lora_down/lora_up/alpha) that every loader reads.

Targets, names, merge, LoRA+ and the rest of the kohya API come from networks.lora.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from library import keys
from library.dylora_split import RANK_SCALE_KEY
from library.errors import ToolkitError
from library.lora_io import load_lora, split_modules
from library.options.network_args import DYLORA, declared_names
from networks.lora import LoRAModule, LoRANetwork, _float_or_none, convert_diffusers_names_if_needed

log = logging.getLogger(__name__)

BLOCK_ARGS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "down_lr_weight",
              "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold")
DROPOUT_ARGS = ("dropout", "rank_dropout", "module_dropout")
# the declared names, and networks.lora's that are accepted here with a warning that they have no effect
KNOWN_ARGS = declared_names(DYLORA) | set(BLOCK_ARGS) | set(DROPOUT_ARGS)


class RankUnits(nn.ParameterList):
    """One factor of a DyLoRA module, one Parameter per `unit` ranks; saved and loaded as a single `weight`.

    Separate parameters matter: a unit that takes no part in a step has grad None, so the optimizer leaves
    it alone. Rows of one shared tensor would get zero grads and still drift under momentum and weight decay.
    """

    def __init__(self, weight: torch.Tensor, unit: int, dim: int) -> None:
        super().__init__([nn.Parameter(p.clone()) for p in weight.detach().split(unit, dim)])
        self.unit, self.dim = unit, dim

    @property
    def weight(self) -> torch.Tensor:
        """The whole factor (`[rank, in, ...]` for down, `[out, rank, ...]` for up)."""
        return torch.cat(list(self), self.dim)

    def first(self, n_units: int, trained: int | None = None) -> torch.Tensor:
        """The first n_units units; only unit index `trained` keeps its gradient."""
        parts = [p if i == trained else p.detach() for i, p in enumerate(list(self)[:n_units])]
        return torch.cat(parts, self.dim)

    @torch.no_grad()
    def mul_(self, factor: torch.Tensor | float) -> None:
        for p in self:
            p.mul_(factor)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:  # noqa: ANN001
        w = self.weight
        destination[prefix + "weight"] = w if keep_vars else w.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,  # noqa: ANN001
                              unexpected_keys, error_msgs) -> None:
        key = prefix + "weight"
        unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k != key)
        if key not in state_dict:
            missing_keys.append(key)
            return
        value = state_dict[key]
        shape = self.weight.shape
        if value.shape != shape:
            error_msgs.append(f"size mismatch for {key}: the file has {tuple(value.shape)}, "
                              f"the module needs {tuple(shape)}")
            return
        with torch.no_grad():
            for p, v in zip(self, value.split(self.unit, self.dim)):
                p.copy_(v)


class DyLoRAModule(LoRAModule):
    """A LoRA module whose forward, while training, uses only the first k ranks the network drew this step."""

    def __init__(self, lora_name: str, org_module: nn.Module, multiplier: float = 1.0, lora_dim: int = 4,
                 alpha: float | None = 1.0, unit: int = 1) -> None:
        if unit < 1 or lora_dim % unit:
            raise ToolkitError(f"DyLoRA: network_dim {lora_dim} is not a multiple of unit={unit} ({lora_name})")
        super().__init__(lora_name, org_module, multiplier, lora_dim, alpha)
        self.unit = unit
        self.conv = isinstance(org_module, nn.Conv2d)
        self._kxk = self.conv and org_module.kernel_size != (1, 1)
        if self.conv:
            self.stride, self.padding = org_module.stride, org_module.padding
        # same init as LoRAModule (Kaiming-uniform down, zero up), then split into units
        self.lora_down = RankUnits(self.lora_down.weight, unit, 0)
        self.lora_up = RankUnits(self.lora_up.weight, unit, 1)
        self.trained_unit: int | None = None  # set by the network for each training step
        self.eval_units: int | None = None  # DyLoRANetwork.set_rank: preview a lower rank out of training

    @property
    def is_kxk(self) -> bool:
        return self._kxk

    @property
    def num_units(self) -> int:
        return self.lora_dim // self.unit

    @torch.no_grad()
    def scale_factors_(self, factor: torch.Tensor | float) -> None:
        self.lora_up.mul_(factor)
        self.lora_down.mul_(factor)

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(down, up) for this call: the drawn rank while training, else the preview or the full rank."""
        if self.training and self.trained_unit is not None:
            return self.lora_down.first(self.trained_unit + 1, self.trained_unit), \
                self.lora_up.first(self.trained_unit + 1, self.trained_unit)
        if not self.training and self.eval_units is not None:
            return self.lora_down.first(self.eval_units), self.lora_up.first(self.eval_units)
        return self.lora_down.weight, self.lora_up.weight

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        org = self.org_forward(x, *args, **kwargs)
        if self.multiplier == 0:
            return org
        down, up = self._factors()
        if x.dtype != down.dtype and not torch.is_autocast_enabled():
            x = x.to(down.dtype)
        if self.conv:
            lx = F.conv2d(x, down, stride=self.stride, padding=self.padding)
            out = F.conv2d(lx, up)
        else:
            out = F.linear(F.linear(x, down), up)
        return org + (out * (self.multiplier * self.scale)).to(org.dtype)


class DyLoRANetwork(LoRANetwork):
    """LoRANetwork of DyLoRAModules plus the per-step rank draw (one rank for every module of a step)."""

    def __init__(self, text_encoder: nn.Module | Sequence[nn.Module] | None, unet: nn.Module,
                 multiplier: float = 1.0, lora_dim: int = 4, alpha: float = 1.0, unit: int = 1,
                 apply_to_conv: bool = False, modules_dim: Mapping[str, int] | None = None,
                 modules_alpha: Mapping[str, float] | None = None,
                 loraplus: Mapping[str, float | None] | None = None) -> None:
        self.unit = unit  # read by _new_module during LoRANetwork.__init__ (a plain int, safe before it)
        super().__init__(text_encoder, unet, multiplier, lora_dim, alpha,
                         conv_lora_dim=lora_dim if apply_to_conv else None, conv_alpha=alpha,
                         modules_dim=modules_dim, modules_alpha=modules_alpha, loraplus=loraplus)
        self._roots = ([] if text_encoder is None else
                       list(text_encoder) if isinstance(text_encoder, (list, tuple)) else [text_encoder], unet)
        self._hooks: list = []
        self._pending = False
        log.info("DyLoRA: rank %d in steps of %d", lora_dim, unit)

    def _new_module(self, name: str, child: nn.Module, dim: int, alpha: float | None) -> DyLoRAModule:
        return DyLoRAModule(name, child, self.multiplier, dim, alpha, self.unit)

    @property
    def loras(self) -> list[DyLoRAModule]:
        return self.text_encoder_loras + self.unet_loras

    # --- the rank draw ------------------------------------------------------------------------------
    def apply_to(self, text_encoder=None, unet=None, apply_text_encoder: bool = True,  # noqa: ANN001
                 apply_unet: bool = True) -> None:
        """Wrap the layers, and hook the model roots so each training step draws one rank for all modules."""
        super().apply_to(text_encoder, unet, apply_text_encoder, apply_unet)
        tes = self._roots[0] if text_encoder is None else (
            list(text_encoder) if isinstance(text_encoder, (list, tuple)) else [text_encoder])
        unet = self._roots[1] if unet is None else unet
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self.text_encoder_loras:
            self._hooks += [te.register_forward_pre_hook(lambda *_: self._before_forward(False)) for te in tes]
        if self.unet_loras:
            self._hooks.append(unet.register_forward_pre_hook(lambda *_: self._before_forward(True)))

    def remove_from(self) -> None:
        super().remove_from()
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _before_forward(self, is_unet: bool) -> None:
        """Draw at the first model call of a step (the text encoder(s) when trained, else the U-Net).

        The U-Net call ends a step. Gradient checkpointing re-runs inner blocks, not the root, so a
        recomputed forward keeps the rank its step drew.
        """
        if not self.training:
            return
        if not self._pending:
            self.draw_rank()
        self._pending = not is_unet

    def draw_rank(self, trained_unit: int | None = None) -> int:
        """Pick the unit trained this step (random unless given); modules then use ranks [0, (i+1)·unit)."""
        units = max((m.num_units for m in self.loras), default=1)
        # the global `random`, which train_network's --seed (accelerate set_seed) seeds, as sd-scripts does
        i = random.randrange(units) if trained_unit is None else trained_unit
        for m in self.loras:
            m.trained_unit = min(i, m.num_units - 1)
        return i

    def on_step_start(self, text_encoder=None, unet=None) -> None:  # noqa: ANN001
        """Explicit step boundary for training loops that call it: the next model call draws a new rank."""
        self._pending = False

    def save_weights(self, file: str | os.PathLike, dtype: torch.dtype | None = None,
                     metadata: Mapping[str, str] | None = None) -> None:
        """An ordinary LoRA file, marked so the splitter gives each rank step its trained scale."""
        super().save_weights(file, dtype, {**(metadata or {}), RANK_SCALE_KEY: "constant"})

    def set_rank(self, rank: int | None) -> None:
        """Out of training, use only the first `rank` ranks (a multiple of unit), as the split file would;
        None restores the full rank."""
        if rank is not None and (rank <= 0 or rank % self.unit):
            raise ToolkitError(f"DyLoRA rank {rank} is not a positive multiple of unit={self.unit}")
        for m in self.loras:
            m.eval_units = None if rank is None else min(rank // self.unit, m.num_units)


def _check_kwargs(kwargs: Mapping[str, object], neuron_dropout: float | None) -> None:
    blocks = [k for k in BLOCK_ARGS if kwargs.get(k) not in (None, "", "None")]
    if blocks:
        raise ToolkitError(f"networks.dylora has no block-wise settings ({', '.join(blocks)}): "
                           "drop them or train with networks.lora")
    dropouts = [k for k in ("rank_dropout", "module_dropout") if kwargs.get(k) not in (None, "", "None")]
    if neuron_dropout is not None or kwargs.get("dropout") not in (None, "", "None"):
        dropouts.insert(0, "network_dropout")
    if dropouts:
        log.warning("networks.dylora has no dropout: %s ignored", ", ".join(dropouts))
    unknown = sorted(set(kwargs) - KNOWN_ARGS)
    if unknown:
        log.warning("network_args not used by networks.dylora: %s", ", ".join(unknown))


def _unit(kwargs: Mapping[str, object]) -> int:
    value = kwargs.get("unit")
    if value in (None, "", "None"):
        return 1
    try:
        unit = int(value)
    except (TypeError, ValueError):
        raise ToolkitError(f"network_args unit={value!r}: expected a whole number") from None
    if unit < 1:
        raise ToolkitError(f"network_args unit={unit}: must be 1 or more")
    return unit


def _loraplus(kwargs: Mapping[str, object]) -> dict[str, float | None]:
    return {"all": _float_or_none(kwargs, "loraplus_lr_ratio"), "unet": _float_or_none(kwargs, "loraplus_unet_lr_ratio"),
            "text_encoder": _float_or_none(kwargs, "loraplus_text_encoder_lr_ratio")}


def create_network(multiplier: float, network_dim: int | None, network_alpha: float | None, vae: nn.Module | None,
                   text_encoder: nn.Module | Sequence[nn.Module] | None, unet: nn.Module,
                   neuron_dropout: float | None = None, **kwargs) -> DyLoRANetwork:
    """The kohya entry point: DyLoRA-LierLa, or DyLoRA-C3Lier with `conv_dim` (which must equal network_dim)."""
    _check_kwargs(kwargs, neuron_dropout)
    network_dim = 4 if network_dim is None else int(network_dim)
    network_alpha = 1.0 if network_alpha is None else float(network_alpha)
    unit = _unit(kwargs)
    if network_dim % unit:
        raise ToolkitError(f"DyLoRA: network_dim {network_dim} is not a multiple of network_args unit={unit}")
    conv_dim = kwargs.get("conv_dim")
    if conv_dim not in (None, "", "None"):
        try:
            conv_dim = int(conv_dim)
        except (TypeError, ValueError):
            raise ToolkitError(f"network_args conv_dim={conv_dim!r}: expected a whole number") from None
        if conv_dim != network_dim:
            raise ToolkitError(f"DyLoRA: conv_dim ({conv_dim}) must equal network_dim ({network_dim}); "
                               f"use conv_dim={network_dim} or leave it out")
        if _float_or_none(kwargs, "conv_alpha") not in (None, network_alpha):
            log.warning("DyLoRA: conv_alpha is ignored; 3x3 convs use network_alpha=%s", network_alpha)
    else:
        conv_dim = None
    return DyLoRANetwork(text_encoder, unet, multiplier, network_dim, network_alpha, unit,
                         apply_to_conv=conv_dim is not None, loraplus=_loraplus(kwargs))


def create_network_from_weights(multiplier: float, file: str | os.PathLike | None, vae: nn.Module | None,
                                text_encoder: nn.Module | Sequence[nn.Module] | None, unet: nn.Module,
                                weights_sd: Mapping[str, torch.Tensor] | None = None, for_inference: bool = False,
                                **kwargs) -> tuple[DyLoRANetwork, dict[str, torch.Tensor]]:
    """A DyLoRA network shaped like a file's modules (to continue training it); weights are not loaded."""
    if weights_sd is None:
        weights_sd, _ = load_lora(file)
    weights_sd = convert_diffusers_names_if_needed(dict(weights_sd), keys.layout_from_config(unet.config))
    modules = split_modules(weights_sd, file or "<weights>")
    network = DyLoRANetwork(text_encoder, unet, multiplier, unit=_unit(kwargs),
                            modules_dim={n: m.rank for n, m in modules.items()},
                            modules_alpha={n: m.alpha for n, m in modules.items()}, loraplus=_loraplus(kwargs))
    return network, weights_sd

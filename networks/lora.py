"""LoRA network for SD1/SD2/SDXL: LoRA-LierLa (Linear and 1x1 conv) and LoRA-C3Lier (adds kxk convs).

kohya-compatible: the same target rules, key names, alpha/scale, dropouts and public API
(`create_network`, `create_network_from_weights`, `LoRANetwork.apply_to/merge_to/save_weights/...`), so files
trained here load in sd-scripts, diffusers, ComfyUI and A1111, and theirs load here. Works on Diffusers
`UNet2DConditionModel` and transformers CLIP text encoders, so it also plugs into a Diffusers pipeline.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from library import keys
from library.block_weights import BlockSettings, parse_block_settings
from library.errors import ToolkitError
from library.lora_io import compose, load_lora, save_lora, split_modules
from library.options.network_args import LORA, declared_names

log = logging.getLogger(__name__)

UNET_TARGETS = ("Transformer2DModel",)
UNET_CONV_TARGETS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TE_TARGETS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")
PLAIN_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
KNOWN_ARGS = declared_names(LORA)  # the network_args read here, as declared for the UI and the checks


class LoRAModule(nn.Module):
    """Adds `up(down(x)) * multiplier * alpha/rank` to a wrapped Linear or Conv2d by replacing its forward."""

    def __init__(self, lora_name: str, org_module: nn.Module, multiplier: float = 1.0, lora_dim: int = 4,
                 alpha: float | None = 1.0, dropout: float | None = None, rank_dropout: float | None = None,
                 module_dropout: float | None = None) -> None:
        super().__init__()
        self.lora_name = lora_name
        self.lora_dim = lora_dim
        if isinstance(org_module, nn.Conv2d):
            k, s, p = org_module.kernel_size, org_module.stride, org_module.padding
            self.lora_down = nn.Conv2d(org_module.in_channels, lora_dim, k, s, p, bias=False)
            self.lora_up = nn.Conv2d(lora_dim, org_module.out_channels, 1, 1, bias=False)
        else:
            self.lora_down = nn.Linear(org_module.in_features, lora_dim, bias=False)
            self.lora_up = nn.Linear(lora_dim, org_module.out_features, bias=False)
        if alpha is None or float(alpha) == 0:
            alpha = lora_dim
        alpha = float(alpha.item() if isinstance(alpha, torch.Tensor) else alpha)
        self.scale = alpha / lora_dim
        self.register_buffer("alpha", torch.tensor(alpha))
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        self.multiplier = multiplier
        self.dropout, self.rank_dropout, self.module_dropout = dropout, rank_dropout, module_dropout
        self.org_module = [org_module]  # a list keeps it out of this module's parameters and state dict
        self.org_forward = None

    @property
    def is_kxk(self) -> bool:
        return isinstance(self.lora_down, nn.Conv2d) and self.lora_down.kernel_size != (1, 1)

    @torch.no_grad()
    def scale_factors_(self, factor: torch.Tensor | float) -> None:
        """Multiply both factors in place (max-norm regularisation); ΔW scales by factor²."""
        self.lora_up.weight.mul_(factor)
        self.lora_down.weight.mul_(factor)

    def apply_to(self) -> None:
        """Route the wrapped layer's forward through this module (the layer stays in its model)."""
        if self.org_forward is None:
            self.org_forward = self.org_module[0].forward
            self.org_module[0].forward = self.forward

    def remove(self) -> None:
        """Undo `apply_to`: the wrapped layer runs its own forward again."""
        if self.org_forward is not None:
            self.org_module[0].forward = self.org_forward
            self.org_forward = None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        org = self.org_forward(x, *args, **kwargs)
        if self.multiplier == 0:
            return org
        if self.training and self.module_dropout and torch.rand(1).item() < self.module_dropout:
            return org
        w = self.lora_down.weight
        lx = self.lora_down(x.to(w.dtype) if x.dtype != w.dtype and not torch.is_autocast_enabled() else x)
        if self.training and self.dropout:
            lx = nn.functional.dropout(lx, p=self.dropout)
        scale = self.scale
        if self.training and self.rank_dropout:
            shape = (lx.shape[0], self.lora_dim, 1, 1) if lx.ndim == 4 else (lx.shape[0], *[1] * (lx.ndim - 2), self.lora_dim)
            mask = (torch.rand(shape, device=lx.device) > self.rank_dropout).to(lx.dtype)
            lx = lx * mask
            scale = scale / (1.0 - self.rank_dropout)
        return org + (self.lora_up(lx) * (self.multiplier * scale)).to(org.dtype)

    def delta_weight(self, up: torch.Tensor | None = None, down: torch.Tensor | None = None,
                     alpha: float | None = None) -> torch.Tensor:
        """ΔW = (alpha/rank)·up@down in float32, shaped like the wrapped weight."""
        up = self.lora_up.weight if up is None else up
        down = self.lora_down.weight if down is None else down
        scale = self.scale if alpha is None else float(alpha) / down.shape[0]
        delta = compose(up.float(), down.float()) * scale
        return delta.reshape(self.org_module[0].weight.shape)

    @torch.no_grad()
    def merge_to_org(self, sd: Mapping[str, torch.Tensor] | None = None, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> None:
        """Bake `multiplier * ΔW` into the wrapped weight (float32 math, cast back)."""
        org = self.org_module[0]
        if sd is None:
            delta = self.delta_weight()
        else:
            alpha = sd.get("alpha")
            delta = self.delta_weight(sd["lora_up.weight"], sd["lora_down.weight"],
                                      None if alpha is None else float(alpha))
        weight = org.weight
        new = weight.float() + self.multiplier * delta.to(weight.device)
        org.weight.copy_(new.to(dtype or weight.dtype))
        if device is not None:
            org.to(device)


class LoRANetwork(nn.Module):
    """All LoRA modules of one model: creation by kohya's target rules, application, merge, save."""

    def __init__(self, text_encoder: nn.Module | Sequence[nn.Module] | None, unet: nn.Module, multiplier: float = 1.0,
                 lora_dim: int = 4, alpha: float = 1.0, dropout: float | None = None,
                 rank_dropout: float | None = None, module_dropout: float | None = None,
                 conv_lora_dim: int | None = None, conv_alpha: float | None = None,
                 modules_dim: Mapping[str, int] | None = None, modules_alpha: Mapping[str, float] | None = None,
                 blocks: BlockSettings | None = None, loraplus: Mapping[str, float | None] | None = None) -> None:
        super().__init__()
        self.multiplier = multiplier
        self.lora_dim, self.alpha = lora_dim, alpha
        self.conv_lora_dim, self.conv_alpha = conv_lora_dim, conv_alpha
        self.dropout, self.rank_dropout, self.module_dropout = dropout, rank_dropout, module_dropout
        self.blocks = blocks
        self.loraplus = dict(loraplus or {})
        self.layout = keys.layout_from_config(unet.config)
        self.is_sdxl = self.layout.sdxl
        self._modules_dim, self._modules_alpha = modules_dim, modules_alpha
        tes = [] if text_encoder is None else (list(text_encoder) if isinstance(text_encoder, (list, tuple))
                                               else [text_encoder])
        self.text_encoder_loras: list[LoRAModule] = []
        for i, te in enumerate(tes):
            prefix = "lora_te" if len(tes) == 1 else f"lora_te{i + 1}"
            self.text_encoder_loras += self._create(te, TE_TARGETS, (), lambda path, p=prefix: keys.te_lora_name(p, path))
        conv_targets = UNET_CONV_TARGETS if (conv_lora_dim or modules_dim is not None or
                                             (blocks is not None and blocks.conv_dims is not None)) else ()
        self.unet_loras = self._create(unet, UNET_TARGETS, conv_targets,
                                       lambda path: keys.unet_lora_name(path, self.layout))
        log.info("LoRA modules: text encoder %d, U-Net %d", len(self.text_encoder_loras), len(self.unet_loras))
        names = [m.lora_name for m in self.text_encoder_loras + self.unet_loras]
        if len(set(names)) != len(names):
            raise ToolkitError("duplicate LoRA module names: the model's module tree is not a supported SD layout")

    def _dim_alpha(self, name: str, kxk: bool) -> tuple[int, float | None] | None:
        if self._modules_dim is not None:
            if name not in self._modules_dim:
                return None
            return self._modules_dim[name], (self._modules_alpha or {}).get(name)
        if self.blocks is not None and name.startswith("lora_unet_"):
            return self.blocks.dim_alpha(name, kxk, self.is_sdxl)
        if kxk:
            return (self.conv_lora_dim, self.conv_alpha) if self.conv_lora_dim else None
        return self.lora_dim, self.alpha

    def _create(self, root: nn.Module, targets: Sequence[str], conv_targets: Sequence[str], namer) -> list[LoRAModule]:  # noqa: ANN001
        loras = []
        for parent_path, parent in root.named_modules():
            cls = type(parent).__name__
            if cls not in targets and cls not in conv_targets:
                continue
            for child_path, child in parent.named_modules():
                if not isinstance(child, (nn.Linear, nn.Conv2d)):
                    continue
                kxk = isinstance(child, nn.Conv2d) and child.kernel_size != (1, 1)
                if kxk and cls in targets:
                    continue
                name = namer(f"{parent_path}.{child_path}" if child_path else parent_path)
                dim_alpha = self._dim_alpha(name, kxk)
                if dim_alpha is None or not dim_alpha[0]:
                    continue
                loras.append(self._new_module(name, child, *dim_alpha))
        return loras

    def _new_module(self, name: str, child: nn.Module, dim: int, alpha: float | None) -> LoRAModule:
        """One module for one target layer; subclasses (networks.dylora) return their own module type."""
        return LoRAModule(name, child, self.multiplier, dim, alpha, self.dropout, self.rank_dropout,
                          self.module_dropout)

    # --- application -------------------------------------------------------------------------------
    def apply_to(self, text_encoder=None, unet=None, apply_text_encoder: bool = True,  # noqa: ANN001
                 apply_unet: bool = True) -> None:
        """Wrap the target layers and register the modules; a False flag discards that side's modules."""
        if not apply_text_encoder:
            self.text_encoder_loras = []
        if not apply_unet:
            self.unet_loras = []
        for lora in self.text_encoder_loras + self.unet_loras:
            lora.apply_to()
            self.add_module(lora.lora_name, lora)

    def remove_from(self) -> None:
        """Restore every wrapped layer's own forward (the modules stay, unapplied)."""
        for lora in self.text_encoder_loras + self.unet_loras:
            lora.remove()

    def set_multiplier(self, multiplier: float) -> None:
        self.multiplier = multiplier
        for lora in self.text_encoder_loras + self.unet_loras:
            lora.multiplier = multiplier

    def is_mergeable(self) -> bool:
        return True

    def merge_to(self, text_encoder=None, unet=None, weights_sd: Mapping[str, torch.Tensor] | None = None,  # noqa: ANN001
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        """Bake `multiplier * ΔW` of every module into the model weights (sides absent from weights_sd skipped)."""
        if weights_sd is None:
            weights_sd = self.state_dict()
        apply_te = any(k.startswith("lora_te") for k in weights_sd)
        apply_unet = any(k.startswith("lora_unet") for k in weights_sd)
        for lora in (self.text_encoder_loras if apply_te else []) + (self.unet_loras if apply_unet else []):
            prefix = lora.lora_name + "."
            part = {k[len(prefix):]: v for k, v in weights_sd.items() if k.startswith(prefix)}
            if "lora_down.weight" not in part:
                continue
            lora.remove()
            lora.merge_to_org(self._fit(lora, part), dtype, device)
        log.info("merged %s%s", "text encoder " if apply_te else "", "U-Net" if apply_unet else "")

    @staticmethod
    def _fit(lora: LoRAModule, part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Reshape 4-D 1x1 factors for a Linear target (and the reverse), as both forms exist in the wild."""
        out = dict(part)
        for k, mod in (("lora_down.weight", lora.lora_down), ("lora_up.weight", lora.lora_up)):
            if k in out and out[k].shape != mod.weight.shape and out[k].numel() == mod.weight.numel():
                out[k] = out[k].reshape(mod.weight.shape)
        return out

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):  # noqa: ANN201
        """Standard load, after renaming SDXL Diffusers-style names and fitting 1x1 shapes."""
        sd = convert_diffusers_names_if_needed(dict(state_dict), self.layout)
        by_name = {lora.lora_name: lora for lora in self.text_encoder_loras + self.unet_loras}
        fitted = {}
        for k, v in sd.items():
            lora = by_name.get(k.split(".", 1)[0])
            if lora is not None and k.endswith(".weight"):
                v = self._fit(lora, {k.split(".", 1)[1]: v})[k.split(".", 1)[1]]
            fitted[k] = v
        return super().load_state_dict(fitted, strict=strict, assign=assign)

    def load_weights(self, file: str | os.PathLike):  # noqa: ANN201
        sd, _ = load_lora(file)
        return self.load_state_dict(sd, strict=False)

    # --- training -------------------------------------------------------------------------------------
    def prepare_optimizer_params(self, text_encoder_lr: float | Sequence[float] | None, unet_lr: float | None,
                                 default_lr: float | None = None) -> tuple[list[dict], list[str]]:
        """Parameter groups (TE, U-Net per block when block lr is on, LoRA+ up groups) with their lr."""
        groups: list[dict] = []
        descriptions: list[str] = []

        def add(loras: list[LoRAModule], lr: float | None, desc: str, ratio: float | None) -> None:
            if not loras:
                return
            if ratio:
                plain = [p for lr_ in loras for n, p in lr_.named_parameters() if "lora_up" not in n]
                ups = [p for lr_ in loras for n, p in lr_.named_parameters() if "lora_up" in n]
                parts = [(plain, lr, desc), (ups, None if lr is None else lr * ratio, desc + " plus")]
            else:
                parts = [([p for lr_ in loras for p in lr_.parameters()], lr, desc)]
            for params, group_lr, d in parts:
                if group_lr == 0 or not params:
                    continue
                group = {"params": params}
                if group_lr is not None:
                    group["lr"] = group_lr
                groups.append(group)
                descriptions.append(d)

        # one value serves every text encoder; SDXL takes a second for te2 (sd-scripts); an empty list means unset
        te_lrs = (list(text_encoder_lr) if isinstance(text_encoder_lr, (list, tuple)) else [text_encoder_lr]) or [None]
        te_ratio = self.loraplus.get("text_encoder") or self.loraplus.get("all")
        for i, prefix in enumerate(("lora_te1_", "lora_te2_") if self.is_sdxl else ("lora_te_",)):
            lr = te_lrs[min(i, len(te_lrs) - 1)]
            lr = default_lr if lr is None else lr
            add([m for m in self.text_encoder_loras if m.lora_name.startswith(prefix)], lr,
                "textencoder" if not self.is_sdxl else f"textencoder {i + 1}", te_ratio)
        unet_base = default_lr if unet_lr is None else unet_lr
        unet_ratio = self.loraplus.get("unet") or self.loraplus.get("all")
        if self.blocks is not None and self.blocks.lr_weights is not None:
            by_block: dict[int, list[LoRAModule]] = {}
            for m in self.unet_loras:
                by_block.setdefault(self.blocks.block_index(m.lora_name, self.is_sdxl), []).append(m)
            for idx in sorted(by_block):
                weight = self.blocks.lr_weight(idx)
                add(by_block[idx], None if unet_base is None else unet_base * weight, f"unet block {idx}", unet_ratio)
        else:
            add(self.unet_loras, unet_base, "unet", unet_ratio)
        return groups, descriptions

    def prepare_grad_etc(self, text_encoder=None, unet=None) -> None:  # noqa: ANN001
        self.requires_grad_(True)

    def on_epoch_start(self, text_encoder=None, unet=None) -> None:  # noqa: ANN001
        self.train()

    def get_trainable_params(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def enable_gradient_checkpointing(self) -> None:
        """Nothing to do: the wrapped model's own checkpointing covers the LoRA modules."""

    @torch.no_grad()
    def apply_max_norm_regularization(self, max_norm_value: float, device: torch.device | str | None = None
                                      ) -> tuple[int, float, float]:
        """Scale each module so ‖ΔW‖_F ≤ max_norm; returns (modules scaled, mean norm, max norm)."""
        norms, scaled = [], 0
        for lora in self.text_encoder_loras + self.unet_loras:
            norm = lora.delta_weight().norm().clamp(min=max_norm_value / 2)
            ratio = norm.clamp(max=max_norm_value) / norm
            if ratio != 1:
                scaled += 1
                lora.scale_factors_(ratio.sqrt().to(lora.lora_up.weight.dtype))
            norms.append(float(norm * ratio))
        return scaled, (sum(norms) / len(norms)) if norms else 0.0, max(norms, default=0.0)

    def save_weights(self, file: str | os.PathLike, dtype: torch.dtype | None = None,
                     metadata: Mapping[str, str] | None = None) -> None:
        """Write the LoRA file (safetensors with metadata and sshs hashes after the cast; else torch.save)."""
        save_lora(file, self.state_dict(), metadata, dtype)


def convert_diffusers_names_if_needed(sd: dict[str, torch.Tensor], layout: keys.UNetLayout) -> dict[str, torch.Tensor]:
    """SDXL files with Diffusers-style U-Net names (`lora_unet_down_blocks_...`) -> original SAI names."""
    if not layout.sdxl or not any(k.startswith(("lora_unet_down_blocks_", "lora_unet_up_blocks_", "lora_unet_mid_block_"))
                                  for k in sd):
        return sd
    from library.keys import unet as unet_keys

    table = {}
    for orig, diff, _ in unet_keys.module_map(layout):
        table["lora_unet_" + diff.replace(".", "_") + "_"] = "lora_unet_" + orig.replace(".", "_") + "_"
    out = {}
    for k, v in sd.items():
        for src in sorted(table, key=len, reverse=True):
            if k.startswith(src):
                rest = k[len(src):]
                for d_inner, o_inner in (("conv1", "in_layers_2"), ("conv2", "out_layers_3"),
                                         ("time_emb_proj", "emb_layers_1"), ("conv_shortcut", "skip_connection")):
                    if rest.startswith(d_inner + ".") and "resnets" in src:
                        rest = o_inner + rest[len(d_inner):]
                k = table[src] + rest
                break
        out[k] = v
    log.info("converted Diffusers-style SDXL U-Net LoRA names to original names")
    return out


def _float_or_none(kwargs: Mapping[str, object], key: str) -> float | None:
    value = kwargs.get(key)
    if value is None or value == "None":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ToolkitError(f"network_args {key}={value!r}: expected a number") from None


def create_network(multiplier: float, network_dim: int | None, network_alpha: float | None, vae: nn.Module | None,
                   text_encoder: nn.Module | Sequence[nn.Module] | None, unet: nn.Module,
                   neuron_dropout: float | None = None, **kwargs) -> LoRANetwork:
    """The kohya entry point: a LoRA network for `unet` and `text_encoder` (a list for SDXL)."""
    unknown = sorted(set(kwargs) - KNOWN_ARGS)
    if unknown:
        log.warning("network_args not used by networks.lora: %s", ", ".join(unknown))
    network_dim = 4 if network_dim is None else int(network_dim)
    network_alpha = 1.0 if network_alpha is None else float(network_alpha)
    conv_dim = kwargs.get("conv_dim")
    conv_dim = int(conv_dim) if conv_dim not in (None, "None") else None
    conv_alpha = _float_or_none(kwargs, "conv_alpha")
    if conv_dim is not None and conv_alpha is None:
        conv_alpha = 1.0
    ratio = _float_or_none(kwargs, "loraplus_lr_ratio")
    loraplus = {"all": ratio, "unet": _float_or_none(kwargs, "loraplus_unet_lr_ratio"),
                "text_encoder": _float_or_none(kwargs, "loraplus_text_encoder_lr_ratio")}
    is_sdxl = keys.layout_from_config(unet.config).sdxl
    blocks = parse_block_settings(kwargs, network_dim, network_alpha, conv_dim, conv_alpha, is_sdxl)
    dropout = neuron_dropout if neuron_dropout is not None else _float_or_none(kwargs, "dropout")
    return LoRANetwork(text_encoder, unet, multiplier, network_dim, network_alpha, dropout,
                       _float_or_none(kwargs, "rank_dropout"), _float_or_none(kwargs, "module_dropout"),
                       conv_dim, conv_alpha, blocks=blocks, loraplus=loraplus)


def create_network_from_weights(multiplier: float, file: str | os.PathLike | None, vae: nn.Module | None,
                                text_encoder: nn.Module | Sequence[nn.Module] | None, unet: nn.Module,
                                weights_sd: Mapping[str, torch.Tensor] | None = None, for_inference: bool = False,
                                **kwargs) -> tuple[LoRANetwork, dict[str, torch.Tensor]]:
    """A network shaped like a file's modules (rank per module, alpha per module); weights are not loaded.

    A file holding other modules than plain LoRA (LoHa, LoKr, DoRA, Tucker LoCon, ...) gets a networks.lycoris
    network, which applies every kind with the same API."""
    if weights_sd is None:
        from library.files import load_state_dict

        weights_sd, _ = load_state_dict(file)
        weights_sd = dict(weights_sd)
    if any(not k.endswith(PLAIN_SUFFIXES) for k in weights_sd):
        from networks import lycoris

        log.info("%s holds LyCORIS modules: networks.lycoris applies them", file or "the weights")
        return lycoris.create_network_from_weights(multiplier, file, vae, text_encoder, unet, weights_sd,
                                                   for_inference, **kwargs)
    layout = keys.layout_from_config(unet.config)
    weights_sd = convert_diffusers_names_if_needed(dict(weights_sd), layout)
    modules = split_modules(weights_sd, file or "<weights>")
    dims = {n: m.rank for n, m in modules.items()}
    alphas = {n: m.alpha for n, m in modules.items()}
    # ranks come from the file; only the block lr weights (down/mid/up_lr_weight) matter here
    blocks = parse_block_settings(kwargs, 1, 1.0, None, None, layout.sdxl)
    if blocks is not None and blocks.lr_weights is None:
        blocks = None
    network = LoRANetwork(text_encoder, unet, multiplier, modules_dim=dims, modules_alpha=alphas, blocks=blocks,
                          loraplus={"all": _float_or_none(kwargs, "loraplus_lr_ratio"),
                                    "unet": _float_or_none(kwargs, "loraplus_unet_lr_ratio"),
                                    "text_encoder": _float_or_none(kwargs, "loraplus_text_encoder_lr_ratio")})
    made = {m.lora_name for m in network.text_encoder_loras + network.unet_loras}
    missing = sorted(set(dims) - made)
    if missing:
        log.warning("%d LoRA modules in %s match no layer of this model (e.g. %s)", len(missing),
                    file or "the weights", missing[0])
    return network, weights_sd

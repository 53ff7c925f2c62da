"""LyCORIS networks, native: LoRA/LoCon (optionally Tucker), LoHa and LoKr, each optionally with DoRA, for
SD1/SD2/SDXL — `--network_module networks.lycoris` with LyCORIS' network_args (library/options/lycoris_args.py)
and presets (library/lycoris_presets.py).

Files carry LyCORIS' key names, shapes and alphas (lycoris-lora 3.2 reads them), with sd-scripts' module names:
`lora_te_text_model_encoder_…` / `lora_te1_`/`lora_te2_` and kohya U-Net names. ΔW always comes from
`library.adapters` (the one owner of the math). Same public API as networks.lora (`create_network`,
`create_network_from_weights`, `apply_to`, `set_multiplier`, `merge_to`, `save_weights`, ...), so training,
samples, generation and a Diffusers pipeline use it alike. docs/lycoris.md says what each argument means.
The per-layer modules (factors, forward, merging) are networks/lycoris_modules.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from library import adapters, keys
from library.errors import ToolkitError
from library.files import load_state_dict
from library.lycoris_presets import Preset, load_preset, select
from library.options.lycoris_args import KNOWN_ARGS, LycorisArgs, parse_lycoris_args  # noqa: F401 (KNOWN_ARGS: API)
from networks.lora import LoRANetwork, convert_diffusers_names_if_needed
from networks.lycoris_modules import (  # noqa: F401 (the module classes are part of this module's API)
    MODULES,
    AdapterModule,
    FileModule,
    LoConModule,
    LoHaModule,
    LoKrModule,
    module_from_tensors,
)

log = logging.getLogger(__name__)


class LycorisNetwork(LoRANetwork):
    """All LyCORIS modules of one model. Targeting and names as lycoris.kohya on sd-scripts' models; the
    rest of the kohya API (optimizer groups with LoRA+, multiplier, saving) is networks.lora's."""

    def __init__(self, text_encoder: nn.Module | Sequence[nn.Module] | None, unet: nn.Module,
                 multiplier: float = 1.0, lora_dim: int = 4, alpha: float = 1.0, args: LycorisArgs | None = None,
                 conv_dim: int | None = None, conv_alpha: float | None = None,
                 modules: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> None:
        nn.Module.__init__(self)
        self.multiplier = multiplier
        self.args = args or LycorisArgs()
        self.lora_dim, self.alpha = lora_dim, alpha
        self.conv_lora_dim = lora_dim if conv_dim is None else conv_dim
        self.conv_alpha = alpha if conv_alpha is None else conv_alpha
        self.blocks = None
        a = self.args
        self.loraplus = {"all": a.loraplus_lr_ratio, "unet": a.loraplus_unet_lr_ratio,
                         "text_encoder": a.loraplus_text_encoder_lr_ratio}
        self.layout = keys.layout_from_config(unet.config)
        self.is_sdxl = self.layout.sdxl
        tes = [] if text_encoder is None else (list(text_encoder) if isinstance(text_encoder, (list, tuple))
                                               else [text_encoder])
        if modules is not None:
            self.text_encoder_loras, self.unet_loras = self._from_file(tes, unet, modules)
        else:
            self.text_encoder_loras, self.unet_loras = self._create_all(tes, unet, load_preset(a.preset))
        kinds: dict[str, int] = {}
        for m in self.text_encoder_loras + self.unet_loras:
            kinds[m.algo] = kinds.get(m.algo, 0) + 1
        log.info("LyCORIS modules: text encoder %d, U-Net %d (%s)", len(self.text_encoder_loras),
                 len(self.unet_loras), ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))

    def _unet_path(self, path: str) -> str:
        return keys.unet.diffusers_to_original(path, self.layout) if self.is_sdxl else path

    def _te_prefixes(self, tes: Sequence[nn.Module]) -> list[str]:
        return ["lora_te" if len(tes) == 1 else f"lora_te{i + 1}" for i in range(len(tes))]

    def _create_all(self, tes: Sequence[nn.Module], unet: nn.Module, preset: Preset
                    ) -> tuple[list[AdapterModule], list[AdapterModule]]:
        te_loras = []
        for te, prefix in zip(tes, self._te_prefixes(tes)):
            found = select(te, preset.te_modules, preset.te_names, preset.use_fnmatch, keys.clip.canonical)
            te_loras += [m for path, layer in found if (m := self._new(f"{prefix}_{path}", layer)) is not None]
        found = select(unet, preset.unet_modules, preset.unet_names, preset.use_fnmatch, self._unet_path)
        unet_loras = [m for path, layer in found
                      if (m := self._new(f"lora_unet_{path}", layer, preset.enable_conv)) is not None]
        return te_loras, unet_loras

    def _new(self, path: str, layer: nn.Module, enable_conv: bool = True) -> AdapterModule | None:
        name = path.replace(".", "_")
        if isinstance(layer, nn.Conv2d) and tuple(layer.kernel_size) != (1, 1):
            if not enable_conv or not self.conv_lora_dim:
                return None
            dim, alpha = self.conv_lora_dim, self.conv_alpha
        else:
            dim, alpha = self.lora_dim, self.alpha
        return MODULES[self.args.algo](name, layer, self.multiplier, dim, alpha, self.args)

    def _layers(self, tes: Sequence[nn.Module], unet: nn.Module) -> tuple[dict[str, nn.Module], set[str]]:
        """Every adaptable layer by kohya name (as LyCORIS' loader looks them up), and the text-encoder names."""
        kinds = (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.GroupNorm)
        table, te_names = {}, set()
        for te, prefix in zip(tes, self._te_prefixes(tes)):
            for path, layer in te.named_modules():
                if isinstance(layer, kinds):
                    name = keys.te_lora_name(prefix, path)
                    table[name] = layer
                    te_names.add(name)
        for path, layer in unet.named_modules():
            if isinstance(layer, kinds):
                try:
                    table[keys.unet_lora_name(path, self.layout)] = layer
                except KeyError:
                    continue
        return table, te_names

    def _from_file(self, tes: Sequence[nn.Module], unet: nn.Module,
                   modules: Mapping[str, Mapping[str, torch.Tensor]]) -> tuple[list, list]:
        table, te_names = self._layers(tes, unet)
        te_loras, unet_loras, missing = [], [], []
        for name, tensors in modules.items():
            layer = table.get(name)
            if layer is None:
                missing.append(name)
                continue
            module = module_from_tensors(name, layer, tensors, self.multiplier)
            (te_loras if name in te_names else unet_loras).append(module)
        if missing:
            log.warning("%d modules of the file match no layer of this model (e.g. %s)", len(missing), missing[0])
        return te_loras, unet_loras

    # --- application (apply_to, set_multiplier, optimizer groups: networks.lora) ------------------------------
    def merge_to(self, text_encoder=None, unet=None, weights_sd: Mapping[str, torch.Tensor] | None = None,  # noqa: ANN001
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        """Bake `multiplier`·ΔW (or the DoRA weight) of every module into the model weights (library.adapters)."""
        groups = adapters.group_modules(weights_sd if weights_sd is not None else self.state_dict())
        for m in self.text_encoder_loras + self.unet_loras:
            if m.lora_name in groups:
                m.remove()
                m.merge_to_org(groups[m.lora_name], dtype, device)
        log.info("merged %d LyCORIS modules", sum(m.lora_name in groups for m in self.text_encoder_loras +
                                                  self.unet_loras))

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):  # noqa: ANN201
        """Standard load after renaming Diffusers-style SDXL names and fitting 1x1 LoCon factors' 2-D/4-D forms."""
        sd = convert_diffusers_names_if_needed(dict(state_dict), self.layout)
        own = {k: v.shape for k, v in self.state_dict().items()}
        fitted = {}
        for k, v in sd.items():
            shape = own.get(k)
            if shape is not None and v.shape != shape and v.numel() == math.prod(shape):
                v = v.reshape(shape)
            fitted[k] = v
        return nn.Module.load_state_dict(self, fitted, strict=strict, assign=assign)

    def load_weights(self, file: str | os.PathLike):  # noqa: ANN201
        sd, _ = load_state_dict(file)
        return self.load_state_dict(dict(sd), strict=False)

    @torch.no_grad()
    def apply_max_norm_regularization(self, max_norm_value: float, device: torch.device | str | None = None
                                      ) -> tuple[int, float, float]:
        norms, scaled = [], 0
        for m in self.text_encoder_loras + self.unet_loras:
            did, norm = m.apply_max_norm_(max_norm_value)
            scaled += did
            norms.append(norm)
        return scaled, (sum(norms) / len(norms)) if norms else 0.0, max(norms, default=0.0)

    def save_weights(self, file: str | os.PathLike, dtype: torch.dtype | None = None,
                     metadata: Mapping[str, str] | None = None) -> None:
        """LyCORIS' layout; `ss_network_args` names the algorithm even when the command line did not."""
        meta = dict(metadata or {})
        if meta:
            try:
                args = json.loads(meta.get("ss_network_args") or "{}")
            except ValueError:
                args = {}
            args.setdefault("algo", self.args.algo)
            meta["ss_network_args"] = json.dumps(args)
        super().save_weights(file, dtype, meta)


def create_network(multiplier: float, network_dim: int | None, network_alpha: float | None, vae: nn.Module | None,
                   text_encoder: nn.Module | Sequence[nn.Module] | None, unet: nn.Module,
                   neuron_dropout: float | None = None, **kwargs) -> LycorisNetwork:
    """The kohya entry point with LyCORIS' network_args (`algo`, `preset`, `conv_dim`, `factor`, `dora_wd`, ...)."""
    if neuron_dropout is not None and "dropout" not in kwargs:
        kwargs["dropout"] = neuron_dropout
    args = parse_lycoris_args(kwargs)
    network_dim = 4 if network_dim is None else int(network_dim)
    network_alpha = 1.0 if network_alpha is None else float(network_alpha)
    # LyCORIS: conv_dim/conv_alpha default to (and 0 means) network_dim/network_alpha
    conv_dim = args.conv_dim or network_dim
    conv_alpha = args.conv_alpha or network_alpha
    if args.conv_dim == 0:
        log.warning("network_args conv_dim=0 means network_dim in LyCORIS; leave kxk convs out with "
                    "preset=full-lin or preset=attn-mlp")
    if args.dora_wd and args.dropout:
        log.warning("DoRA: network dropout is not applied (rank_dropout and module_dropout are), as in LyCORIS")
    if args.dora_wd and args.wd_on_output:
        log.warning("DoRA with wd_on_output=True: A1111 misreads an output-axis dora_scale and ComfyUI normalises it "
                    "differently; the default input axis is applied alike everywhere")
    log.info("LyCORIS %s, preset %s, dim %d alpha %g, conv dim %d alpha %g%s", args.algo, args.preset, network_dim,
             network_alpha, conv_dim, conv_alpha, ", DoRA" if args.dora_wd else "")
    network = LycorisNetwork(text_encoder, unet, multiplier, network_dim, network_alpha, args, conv_dim, conv_alpha)
    if not network.text_encoder_loras + network.unet_loras:
        raise ToolkitError(f"network_args preset={args.preset}: selects no layer of this model")
    return network


def read_weights(file: str | os.PathLike | None, weights_sd: Mapping[str, torch.Tensor] | None
                 ) -> dict[str, torch.Tensor]:
    if weights_sd is None:
        if file is None:
            raise ToolkitError("create_network_from_weights: give a file or weights_sd")
        weights_sd, _ = load_state_dict(file)
    return dict(weights_sd)


def create_network_from_weights(multiplier: float, file: str | os.PathLike | None, vae: nn.Module | None,
                                text_encoder: nn.Module | Sequence[nn.Module] | None, unet: nn.Module,
                                weights_sd: Mapping[str, torch.Tensor] | None = None, for_inference: bool = False,
                                **kwargs) -> tuple[LycorisNetwork, dict[str, torch.Tensor]]:
    """A network shaped like a file's modules (any mix of LoRA/LoCon, LoHa, LoKr, DoRA, full, norm, from LyCORIS
    2.x-4.x, OneTrainer or sd-scripts); the weights are not loaded (load_state_dict or merge_to do that)."""
    sd = read_weights(file, weights_sd)
    sd = convert_diffusers_names_if_needed(sd, keys.layout_from_config(unet.config))
    args = parse_lycoris_args({k: v for k, v in kwargs.items() if k.startswith("loraplus")})
    network = LycorisNetwork(text_encoder, unet, multiplier, args=args, modules=adapters.group_modules(sd))
    return network, sd

"""Additional networks (LoRA) for generation: `--network_module/--network_weights/--network_mul/--network_merge`.

Each network is built with its module's `create_network_from_weights(..., for_inference=True)`. A merged
network bakes `W += mul * ΔW` into the model once (no cost per step, multiplier fixed); an applied one wraps
the layers' forward, so its multiplier can change per prompt (`--am`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from library.errors import ToolkitError
from library.files import load_state_dict
from library.keys import family_of_lora, module_name
from library.models import ModelBundle
from library.network_args import check_network_args
from library.network_module import import_network_module

log = logging.getLogger(__name__)


@dataclass
class LoadedNetwork:
    """A network in use: `merged` ones are part of the weights, the others follow `set_multiplier`."""

    module: str
    path: Path
    network: Any
    multiplier: float
    merged: bool


def parse_network_args(text: str | None, index: int) -> dict[str, str]:
    """`key=value;key=value` (one string per network) -> kwargs."""
    kwargs: dict[str, str] = {}
    for item in (text or "").split(";"):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ToolkitError(f"--network_args for network {index + 1}: {item!r} is not key=value")
        kwargs[key.strip()] = value.strip()
    return kwargs


def check_networks(modules: Sequence[str], weights: Sequence[str], network_args: Sequence[str] | None) -> None:
    """Before the model loads: every network module imports, and reads its `--network_args` (names, values)."""
    if len(modules) == 1 and len(weights) > 1:
        modules = list(modules) * len(weights)
    for i, name in enumerate(modules):
        kwargs = parse_network_args(network_args[i] if network_args and i < len(network_args) else None, i)
        check_network_args(_import(name), kwargs)


def _text_encoder_arg(bundle: ModelBundle) -> torch.nn.Module | list[torch.nn.Module]:
    return bundle.text_encoders if bundle.is_sdxl else bundle.text_encoders[0]


def _check_family(path: Path, weights: dict[str, torch.Tensor], bundle: ModelBundle) -> None:
    names = {module_name(k) for k in weights}
    lora_family = family_of_lora(names)
    if lora_family is None:
        raise ToolkitError(f"{path}: no LoRA modules (lora_unet_*/lora_te*) found in this file")
    if (lora_family == "sdxl") != bundle.is_sdxl:
        made_for = "SDXL" if lora_family == "sdxl" else "SD1/SD2"
        raise ToolkitError(f"{path}: this LoRA was made for {made_for} but the model is {bundle.family}")


def _import(name: str) -> Any:
    module = import_network_module(name)
    if not hasattr(module, "create_network_from_weights"):
        raise ToolkitError(f"--network_module {name}: has no create_network_from_weights()")
    return module


def load_networks(bundle: ModelBundle, modules: Sequence[str], weights: Sequence[str],
                  multipliers: Sequence[float] | None = None, network_args: Sequence[str] | None = None,
                  merge_count: int = 0, show_meta: bool = False, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> list[LoadedNetwork]:
    """Build, load and apply (or merge, for the first `merge_count`) one network per weights file."""
    if len(modules) == 1 and len(weights) > 1:
        modules = list(modules) * len(weights)  # one module for all files is what users mean
    if len(weights) != len(modules):
        raise ToolkitError(f"--network_weights: give one file per --network_module ({len(modules)} modules, "
                           f"{len(weights)} files)")
    loaded = []
    for i, (name, file) in enumerate(zip(modules, weights)):
        path = Path(file)
        mul = 1.0 if not multipliers or i >= len(multipliers) else float(multipliers[i])
        kwargs = parse_network_args(network_args[i] if network_args and i < len(network_args) else None, i)
        sd, meta = load_state_dict(path)  # any LoRA/LyCORIS file; the module says what it cannot apply
        sd = dict(sd)
        if show_meta:
            log.info("metadata of %s: %s", path, meta or "(none)")
        _check_family(path, sd, bundle)
        module = _import(name)
        te = _text_encoder_arg(bundle)
        network, sd = module.create_network_from_weights(mul, str(path), bundle.vae, te, bundle.unet,
                                                          weights_sd=sd, for_inference=True, **kwargs)
        if network is None:
            raise ToolkitError(f"{path}: {name} could not build a network from this file")
        merge = i < merge_count
        if merge and not getattr(network, "is_mergeable", lambda: False)():
            log.warning("%s: %s cannot be merged; applying it instead", path, name)
            merge = False
        if merge:
            network.merge_to(te, bundle.unet, sd, dtype, device)
            log.info("merged %s (multiplier %g)", path.name, mul)
        else:
            network.apply_to(te, bundle.unet)
            info = network.load_state_dict(sd, strict=False)
            if info.unexpected_keys:
                n = len({module_name(k) for k in info.unexpected_keys})
                log.warning("%s: %d modules of the file match nothing in the model (e.g. %s)", path, n,
                            info.unexpected_keys[0])
            network.to(device=device, dtype=dtype).eval()
            network.requires_grad_(False)
            log.info("applied %s (multiplier %g)", path.name, mul)
        loaded.append(LoadedNetwork(name, path, network, mul, merge))
    return loaded


def set_multipliers(networks: Sequence[LoadedNetwork], muls: Sequence[float] | None) -> None:
    """Per-batch multipliers for the applied networks (`--am`); None restores the command-line values."""
    applied = [n for n in networks if not n.merged]
    for i, net in enumerate(applied):
        net.network.set_multiplier(net.multiplier if muls is None else muls[min(i, len(muls) - 1)])

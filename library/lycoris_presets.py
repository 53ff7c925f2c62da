"""Which layers a LyCORIS network trains: LyCORIS' built-in presets (`lycoris/config.py::PRESET`, 3.2) and TOML
presets, resolved on this toolkit's Diffusers U-Nets and transformers CLIPs exactly as `lycoris.kohya` resolves
them on sd-scripts' own U-Nets.

LyCORIS matches class names and module paths of sd-scripts' models. Here the class names are the same except
Diffusers' `Attention` (sd-scripts: `CrossAttention`), and paths are matched in sd-scripts' form: SD1/SD2 U-Net
paths are Diffusers paths, SDXL ones the original (SGM) paths, so on SDXL the name targets `conv_in`, `conv_out`
and `time_embedding.linear_1/2` select nothing there either. Inside a targeted class every Linear and Conv2d is
trained; kxk convs only when the preset enables convs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from library.errors import ToolkitError

_TE = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")
_ALL = ("Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D")
_NAMES = ("conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2")


@dataclass(frozen=True)
class Preset:
    """Target classes and module-path patterns (`re.match`, or fnmatch) of each side, and whether kxk convs train."""

    enable_conv: bool
    unet_modules: tuple[str, ...]
    unet_names: tuple[str, ...] = ()
    te_modules: tuple[str, ...] = ()
    te_names: tuple[str, ...] = ()
    use_fnmatch: bool = False


PRESETS = {
    "full": Preset(True, _ALL, _NAMES, _TE),
    "full-lin": Preset(False, ("Transformer2DModel", "ResnetBlock2D"), _NAMES[2:], _TE),
    "attn-mlp": Preset(False, ("Transformer2DModel",), (), _TE),
    "attn-only": Preset(False, ("CrossAttention", "SelfAttention"), (), ("CLIPAttention", "CLIPSdpaAttention")),
    "unet-only": Preset(True, _ALL, _NAMES),
    "unet-transformer-only": Preset(False, ("Transformer2DModel",)),
    "unet-convblock-only": Preset(True, ("ResnetBlock2D", "Downsample2D", "Upsample2D"), _NAMES[:2]),
    # LyCORIS' ia3 names are re.match-ed from the start of full paths: they select nothing (spec §6), here too
    "ia3": Preset(False, (), ("to_k", "to_v", "ff.net.2"), (), ("k_proj", "v_proj", "mlp.fc2")),
}
# Diffusers class -> the sd-scripts class LyCORIS presets name
CLASS_ALIASES = {"Attention": "CrossAttention"}
_TOML_KEYS = {"enable_conv", "unet_target_module", "unet_target_name", "text_encoder_target_module",
              "text_encoder_target_name", "use_fnmatch"}


def load_preset(name_or_path: str) -> Preset:
    """A built-in preset by name, or a LyCORIS preset TOML (target keys only)."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise ToolkitError(f"network_args preset={name_or_path}: neither a preset ({', '.join(PRESETS)}) "
                           "nor a TOML file")
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ToolkitError(f"{path}: cannot read this preset ({str(e).splitlines()[0]})") from None
    unknown = sorted(set(data) - _TOML_KEYS)
    if unknown:
        raise ToolkitError(f"{path}: preset keys not supported by networks.lycoris: {', '.join(unknown)} "
                           "(per-module algorithms need --network_module lycoris.kohya)")
    full = PRESETS["full"]
    return Preset(bool(data.get("enable_conv", full.enable_conv)),
                  tuple(data.get("unet_target_module", full.unet_modules)),
                  tuple(data.get("unet_target_name", full.unet_names)),
                  tuple(data.get("text_encoder_target_module", full.te_modules)),
                  tuple(data.get("text_encoder_target_name", full.te_names)), bool(data.get("use_fnmatch", False)))


def _matcher(use_fnmatch: bool) -> Callable[[str, str], bool]:
    if use_fnmatch:
        import fnmatch

        return lambda pattern, name: fnmatch.fnmatch(name, pattern)
    return lambda pattern, name: re.match(pattern, name) is not None


def _adaptable(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv2d))


def select(root: nn.Module, classes: tuple[str, ...], names: tuple[str, ...], use_fnmatch: bool,
           kohya_path: Callable[[str], str]) -> Iterator[tuple[str, nn.Module]]:
    """(kohya path, layer) of every Linear/Conv2d the targets select, in LyCORIS' order, each once.

    `kohya_path` turns a module path of `root` into the path sd-scripts' model has (the one LyCORIS matches and
    names)."""
    match = _matcher(use_fnmatch)
    seen: set[int] = set()

    def path_of(path: str) -> str | None:
        try:
            return kohya_path(path)
        except KeyError:
            return None

    for path, module in root.named_modules():
        cls = CLASS_ALIASES.get(type(module).__name__, type(module).__name__)
        kpath = path_of(path) if _adaptable(module) or cls in classes else None
        if cls in classes and not (kpath and any(match(t, kpath) for t in names)):
            for sub, child in module.named_modules():
                full = f"{path}.{sub}" if sub else path
                if _adaptable(child) and id(child) not in seen and (kp := path_of(full)) is not None:
                    seen.add(id(child))
                    yield kp, child
        elif _adaptable(module) and kpath and id(module) not in seen and \
                (kpath in names or any(match(t, kpath) for t in names)):
            seen.add(id(module))
            yield kpath, module

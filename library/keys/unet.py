"""U-Net names: original (SAI/LDM) module paths <-> Diffusers module paths.

The map is generated from a `UNetLayout` (levels, layers per block, which levels have attention), so SD1,
SD2, SDXL and the tiny test models all share one table builder. Keys and module paths convert alike:
`input_blocks.4.0.in_layers.2.weight` <-> `down_blocks.1.resnets.0.conv1.weight`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

# inner names of a resnet block: original -> Diffusers
_RESNET_INNER = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "emb_layers.1": "time_emb_proj",
    "skip_connection": "conv_shortcut",
}
_RESNET_INNER_REV = {v: k for k, v in _RESNET_INNER.items()}


@dataclass(frozen=True)
class UNetLayout:
    """What the name map depends on: per-level attention flags, res blocks per level, mid attention."""

    down_attention: tuple[bool, ...]
    up_attention: tuple[bool, ...]
    layers_per_block: int
    mid_attention: bool = True
    sdxl: bool = False

    @property
    def levels(self) -> int:
        return len(self.down_attention)


def layout_from_original_keys(keys: Iterable[str]) -> UNetLayout:
    """Derive the layout from original U-Net keys (without the `model.diffusion_model.` prefix)."""
    keys = set(keys)
    inputs = sorted({int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.", k))})
    outputs = sorted({int(m.group(1)) for k in keys if (m := re.match(r"output_blocks\.(\d+)\.", k))})
    if not inputs or not outputs:
        raise ValueError("no input_blocks/output_blocks keys: not an SD U-Net")
    down_attention: list[bool] = []
    layers = 0
    current_attn: bool | None = None
    per_level_layers: list[int] = []
    count = 0
    for n in inputs[1:]:
        if f"input_blocks.{n}.0.op.weight" in keys or f"input_blocks.{n}.0.conv.weight" in keys:
            down_attention.append(bool(current_attn))
            per_level_layers.append(count)
            current_attn, count = None, 0
            continue
        if current_attn is None:
            current_attn = f"input_blocks.{n}.1.proj_in.weight" in keys
        count += 1
    down_attention.append(bool(current_attn))
    per_level_layers.append(count)
    layers = per_level_layers[0]
    if any(c != layers for c in per_level_layers):
        raise ValueError(f"uneven res blocks per level {per_level_layers}")
    levels = len(down_attention)
    if len(outputs) != levels * (layers + 1):
        raise ValueError(f"{len(outputs)} output blocks do not match {levels} levels x {layers + 1}")
    up_attention = tuple(f"output_blocks.{(layers + 1) * i}.1.proj_in.weight" in keys for i in range(levels))
    return UNetLayout(
        down_attention=tuple(down_attention),
        up_attention=up_attention,
        layers_per_block=layers,
        mid_attention="middle_block.1.proj_in.weight" in keys,
        sdxl=any(k.startswith("label_emb.") for k in keys),
    )


def layout_from_config(config) -> UNetLayout:  # noqa: ANN001 - a diffusers FrozenDict or dict
    """Derive the layout from a Diffusers `UNet2DConditionModel` config."""
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        layers = layers[0]
    return UNetLayout(
        down_attention=tuple("CrossAttn" in t for t in config["down_block_types"]),
        up_attention=tuple("CrossAttn" in t for t in config["up_block_types"]),
        layers_per_block=layers,
        mid_attention=(config.get("mid_block_type") or "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn",
        sdxl=config.get("addition_embed_type") == "text_time",
    )


@lru_cache(maxsize=32)
def module_map(layout: UNetLayout) -> tuple[tuple[str, str, bool], ...]:
    """(original prefix, Diffusers prefix, is_resnet) for every block of the U-Net."""
    out: list[tuple[str, str, bool]] = [
        ("time_embed.0", "time_embedding.linear_1", False),
        ("time_embed.2", "time_embedding.linear_2", False),
        ("input_blocks.0.0", "conv_in", False),
        ("out.0", "conv_norm_out", False),
        ("out.2", "conv_out", False),
    ]
    if layout.sdxl:
        out += [("label_emb.0.0", "add_embedding.linear_1", False), ("label_emb.0.2", "add_embedding.linear_2", False)]
    n_layers = layout.layers_per_block
    for i in range(layout.levels):
        for j in range(n_layers):
            n = 1 + (n_layers + 1) * i + j
            out.append((f"input_blocks.{n}.0", f"down_blocks.{i}.resnets.{j}", True))
            if layout.down_attention[i]:
                out.append((f"input_blocks.{n}.1", f"down_blocks.{i}.attentions.{j}", False))
        if i < layout.levels - 1:
            out.append((f"input_blocks.{(n_layers + 1) * (i + 1)}.0.op", f"down_blocks.{i}.downsamplers.0.conv", False))
    out.append(("middle_block.0", "mid_block.resnets.0", True))
    if layout.mid_attention:
        out.append(("middle_block.1", "mid_block.attentions.0", False))
        out.append(("middle_block.2", "mid_block.resnets.1", True))
    else:
        out.append(("middle_block.1", "mid_block.resnets.1", True))
    for i in range(layout.levels):
        for j in range(n_layers + 1):
            n = (n_layers + 1) * i + j
            out.append((f"output_blocks.{n}.0", f"up_blocks.{i}.resnets.{j}", True))
            if layout.up_attention[i]:
                out.append((f"output_blocks.{n}.1", f"up_blocks.{i}.attentions.{j}", False))
        if i < layout.levels - 1:
            n = (n_layers + 1) * i + n_layers
            slot = 2 if layout.up_attention[i] else 1
            out.append((f"output_blocks.{n}.{slot}", f"up_blocks.{i}.upsamplers.0", False))
    return tuple(out)


@lru_cache(maxsize=32)
def _lookup(layout: UNetLayout, to_diffusers: bool) -> dict[str, tuple[str, bool]]:
    if to_diffusers:
        return {o: (d, r) for o, d, r in module_map(layout)}
    return {d: (o, r) for o, d, r in module_map(layout)}


def _convert(path: str, layout: UNetLayout, to_diffusers: bool) -> str:
    table = _lookup(layout, to_diffusers)
    parts = path.split(".")
    for depth in (5, 4, 3, 2, 1):
        head = ".".join(parts[:depth])
        if head in table:
            new_head, is_resnet = table[head]
            rest = parts[depth:]
            if is_resnet and rest:
                inner = _RESNET_INNER if to_diffusers else _RESNET_INNER_REV
                for n in (2, 1):
                    key = ".".join(rest[:n])
                    if key in inner:
                        rest = inner[key].split(".") + rest[n:]
                        break
            return ".".join([new_head, *rest])
    raise KeyError(path)


def original_to_diffusers(path: str, layout: UNetLayout) -> str:
    """Original U-Net key or module path (no `model.diffusion_model.` prefix) to its Diffusers name."""
    return _convert(path, layout, True)


def diffusers_to_original(path: str, layout: UNetLayout) -> str:
    """Diffusers U-Net key or module path to its original (SAI/LDM) name."""
    return _convert(path, layout, False)

"""Block-wise learning rates and ranks for the U-Net (kohya network_args).

SD1/SD2 have 25 blocks (IN00-IN11, MID, OUT00-OUT11); SDXL 23 (time/label emb, input_blocks 0-8, middle 0-2,
output_blocks 0-8, out). `down_lr_weight`/`mid_lr_weight`/`up_lr_weight` take exact-length lists or presets
(`sine`, `cosine`, `linear`, `reverse_linear`, `zeros`, with `+offset`); `block_dims`/`block_alphas`/
`conv_block_dims`/`conv_block_alphas` take one value per block. Wrong lengths and lone numbers are errors
here, where sd-scripts pads silently or crashes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from library.errors import ToolkitError

PRESETS = ("sine", "cosine", "linear", "reverse_linear", "zeros")


def num_blocks(sdxl: bool) -> int:
    return 23 if sdxl else 25


def part_lengths(sdxl: bool) -> tuple[int, int, int]:
    """(down, mid, up) list lengths: SD 12/1/12, SDXL 9/3/9."""
    return (9, 3, 9) if sdxl else (12, 1, 12)


def preset(name: str, n: int) -> list[float]:
    """A preset weight list of length n, with an optional `+offset` (e.g. `sine+.5`)."""
    base, _, offset_text = name.partition("+")
    try:
        offset = float(offset_text) if offset_text else 0.0
    except ValueError:
        raise ToolkitError(f"block lr preset {name!r}: offset {offset_text!r} is not a number") from None
    ramp = [i / (n - 1) for i in range(n)]
    values = {
        "sine": [math.sin(math.pi / 2 * r) for r in ramp],
        "cosine": [math.sin(math.pi / 2 * r) for r in ramp][::-1],
        "linear": ramp,
        "reverse_linear": ramp[::-1],
        "zeros": [0.0] * n,
    }.get(base.strip())
    if values is None:
        raise ToolkitError(f"unknown block lr preset {base!r}: use one of {', '.join(PRESETS)} (optionally +offset)")
    return [v + offset for v in values]


def _as_list(key: str, value: object, n: int, cast=float) -> list:  # noqa: ANN001
    """Parse `a,b,c` (or a list) into exactly n values; empty items are 0."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [s.strip() for s in str(value).strip("[]").split(",")]
    if len(items) != n:
        what = "a single value" if len(items) == 1 else f"{len(items)} values"
        raise ToolkitError(f"network_args {key}: expected {n} comma-separated values (one per block), got {what}")
    try:
        return [cast(v) if str(v).strip() != "" else cast(0) for v in items]
    except (TypeError, ValueError):
        kind = "a whole number" if cast is int else "a number"
        raise ToolkitError(f"network_args {key}: {value!r} holds a value that is not {kind}") from None


def _lr_part(key: str, value: object, n: int) -> list[float]:
    text = value if isinstance(value, str) else None
    if text is not None and "," not in text:
        try:
            float(text)
        except ValueError:
            return preset(text, n)
        if n != 1:
            raise ToolkitError(f"network_args {key}={text}: a single number is not a list; give {n} "
                               f"comma-separated values or a preset ({', '.join(PRESETS)})")
    return _as_list(key, value, n)


def block_index(lora_name: str, sdxl: bool) -> int:
    """Block of a U-Net LoRA module (spec §5.1); -1 for text-encoder or unmatched names."""
    if sdxl:
        m = re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)_(\d+)_", lora_name)
        if not m:
            return -1
        base = {"input_blocks": 1, "middle_block": 10, "output_blocks": 13}[m.group(1)]
        return base + int(m.group(2))
    if "mid_block_" in lora_name and lora_name.startswith("lora_unet_"):
        return 12
    m = re.search(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_", lora_name)
    if not m or not lora_name.startswith("lora_unet_"):
        return -1
    i, kind, j = int(m.group(2)), m.group(3), int(m.group(4))
    base = 1 if m.group(1) == "down" else 13
    return base + 3 * i + (2 if kind in ("downsamplers", "upsamplers") else j)


@dataclass
class BlockSettings:
    """Per-block lr weights (or None) and per-block dims/alphas for Linear/1x1 and kxk modules."""

    lr_weights: list[float] | None
    dims: list[int]
    alphas: list[float]
    conv_dims: list[int] | None
    conv_alphas: list[float] | None

    def block_index(self, lora_name: str, sdxl: bool) -> int:
        return block_index(lora_name, sdxl)

    def lr_weight(self, index: int) -> float:
        if self.lr_weights is None or index < 0:
            return 1.0
        return self.lr_weights[index]

    def dim_alpha(self, lora_name: str, kxk: bool, sdxl: bool) -> tuple[int, float] | None:
        """Rank and alpha of a U-Net module, or None when its block creates no module."""
        idx = block_index(lora_name, sdxl)
        if idx < 0:
            return (self.dims[0], self.alphas[0]) if not kxk else None
        if self.lr_weights is not None and self.lr_weights[idx] == 0:
            return None
        if kxk:
            if self.conv_dims is None or not self.conv_dims[idx]:
                return None
            return self.conv_dims[idx], self.conv_alphas[idx]
        return (self.dims[idx], self.alphas[idx]) if self.dims[idx] else None


def _given(kwargs: Mapping[str, object], key: str) -> bool:
    return kwargs.get(key) not in (None, "", "None")


def parse_lr_weights(kwargs: Mapping[str, object], sdxl: bool) -> list[float] | None:
    """The per-block lr weights (25 SD, 23 SDXL), or None when no *_lr_weight is given.

    `block_lr_zero_threshold` zeroes the given weights that are not above it; parts left unset stay 1.0, as
    in sd-scripts (so a threshold of 1 or more does not silently switch off the blocks nobody named).
    """
    n_down, n_mid, n_up = part_lengths(sdxl)
    if not any(_given(kwargs, k) for k in ("down_lr_weight", "mid_lr_weight", "up_lr_weight")):
        return None
    threshold = kwargs.get("block_lr_zero_threshold")
    try:
        threshold = float(threshold) if threshold not in (None, "", "None") else 0.0
    except (TypeError, ValueError):
        raise ToolkitError(f"network_args block_lr_zero_threshold={threshold!r} is not a number") from None

    def part(key: str, n: int, is_mid: bool) -> list[float]:
        if not _given(kwargs, key):
            return [1.0] * n
        values = _as_list(key, kwargs[key], n) if is_mid else _lr_part(key, kwargs[key], n)
        return [w if w > threshold else 0.0 for w in values]

    down = part("down_lr_weight", n_down, False)
    mid = part("mid_lr_weight", n_mid, True)
    up = part("up_lr_weight", n_up, False)
    return [1.0, *down, *mid, *up, 1.0] if sdxl else [*down, *mid, *up]


def parse_block_settings(kwargs: Mapping[str, object], network_dim: int, network_alpha: float,
                         conv_dim: int | None, conv_alpha: float | None, sdxl: bool) -> BlockSettings | None:
    """Block settings from network_args, or None when no block option is given (the plain network).

    Any of the lr weights or `block_dims`/`block_alphas`/`conv_block_dims`/`conv_block_alphas` turns block mode
    on (sd-scripts ignores the last three without `block_dims`, silently).
    """
    n = num_blocks(sdxl)
    lr_weights = parse_lr_weights(kwargs, sdxl)
    dim_keys = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas")
    if lr_weights is None and not any(_given(kwargs, k) for k in dim_keys):
        return None
    dims = _as_list("block_dims", kwargs["block_dims"], n, int) if _given(kwargs, "block_dims") else [network_dim] * n
    alphas = _opt_list(kwargs, "block_alphas", n, network_alpha)
    if _given(kwargs, "conv_block_dims"):
        conv_dims = _as_list("conv_block_dims", kwargs["conv_block_dims"], n, int)
    else:
        conv_dims = [conv_dim] * n if conv_dim else None
    conv_alphas = _opt_list(kwargs, "conv_block_alphas", n, conv_alpha if conv_alpha is not None else 1.0)
    for key, values in (("block_dims", dims), ("conv_block_dims", conv_dims or [])):
        if any(v < 0 for v in values):
            raise ToolkitError(f"network_args {key}: ranks must be 0 (no module) or more, got {min(values)}")
    return BlockSettings(lr_weights, dims, alphas, conv_dims, conv_alphas)


def _opt_list(kwargs: Mapping[str, object], key: str, n: int, default: float) -> list[float]:
    value = kwargs.get(key)
    if value in (None, "", "None"):
        return [float(default)] * n
    return _as_list(key, value, n)


"""LoRA files opened for merging: names, shapes and alphas up front, factor tensors one module at a time.

Every merge tool reads its inputs through `open_sources`, so ratio/`--lbws` counts, file problems and
family mismatches fail before any output is written, and peak memory stays at about one module per input.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from library.errors import ToolkitError
from library.files import LazySafetensors, open_streaming
from library.keys import family_of_lora
from library.lbw import block_weight, parse_lbws
from library.lora_io import ALPHA, DOWN, UP, LoRAFactors

log = logging.getLogger(__name__)


@dataclass
class LoRASource:
    """One input LoRA: where it is, how strongly it merges, and lazy access to its modules."""

    path: Path
    ratio: float
    tensors: object  # LazySafetensors or an in-memory dict (.ckpt/.pt)
    metadata: dict[str, str]
    down_shapes: dict[str, tuple[int, ...]]
    up_shapes: dict[str, tuple[int, ...]]
    alphas: dict[str, float]
    block_weights: list[float] | None = None
    sdxl: bool = False
    family: str | None = field(default=None)

    @property
    def names(self) -> list[str]:
        return list(self.down_shapes)

    @property
    def title(self) -> str:
        return self.metadata.get("modelspec.title") or self.path.stem

    def rank(self, name: str) -> int:
        return self.down_shapes[name][0]

    def delta_shape(self, name: str) -> tuple[int, ...]:
        """Shape of up@down: (out, in) or (out, in, kh, kw)."""
        return (self.up_shapes[name][0], *self.down_shapes[name][1:])

    def factors(self, name: str, dtype: torch.dtype = torch.float32) -> LoRAFactors:
        down = self.tensors[f"{name}.{DOWN}"].to(dtype)
        up = self.tensors[f"{name}.{UP}"].to(dtype)
        return LoRAFactors(down, up, self.alphas[name])

    def coef(self, name: str) -> float:
        """What multiplies up@down of this module in the merged delta: ratio · block weight · alpha/rank."""
        return self.ratio * self.lbw(name) * self.alphas[name] / self.rank(name)

    def lbw(self, name: str) -> float:
        return block_weight(self.block_weights, name, self.sdxl)


def _shape(tensors: object, key: str) -> tuple[int, ...]:
    return tensors.shape(key) if isinstance(tensors, LazySafetensors) else tuple(tensors[key].shape)


def open_source(path: str | os.PathLike, ratio: float = 1.0) -> LoRASource:
    """Open one LoRA file lazily and check that its modules are complete."""
    path = Path(path)
    tensors, metadata = open_streaming(path)
    keys = list(tensors)
    if any("oft_blocks" in k for k in keys):
        raise ToolkitError(f"{path}: OFT files are not supported by the LoRA merge tools")
    downs = [k[: -len(DOWN) - 1] for k in keys if k.endswith("." + DOWN)]
    if not downs:
        raise ToolkitError(f"{path}: not a LoRA file (no *.lora_down.weight tensors)")
    ups = {k[: -len(UP) - 1] for k in keys if k.endswith("." + UP)}
    if set(downs) != ups:
        odd = sorted(set(downs) ^ ups)[0]
        raise ToolkitError(f"{path}: module {odd} has lora_down without lora_up or the reverse")
    down_shapes, up_shapes, alphas = {}, {}, {}
    for n in downs:
        d, u = _shape(tensors, f"{n}.{DOWN}"), _shape(tensors, f"{n}.{UP}")
        if len(d) not in (2, 4) or len(u) != len(d) or u[1] != d[0]:
            raise ToolkitError(f"{path}: module {n}: lora_up {u} and lora_down {d} do not fit together")
        down_shapes[n], up_shapes[n] = d, u
        a = float(tensors[f"{n}.{ALPHA}"]) if f"{n}.{ALPHA}" in tensors else 0.0
        alphas[n] = a if a != 0 else float(d[0])  # missing or zero alpha means alpha = rank (scale 1)
    family = family_of_lora(downs)
    return LoRASource(path, float(ratio), tensors, dict(metadata), down_shapes, up_shapes, alphas,
                      sdxl=family == "sdxl", family=family)


def open_sources(models: Sequence[str], ratios: Sequence[float] | None, lbws: Sequence[str] | None = None
                 ) -> list[LoRASource]:
    """Open `--models` with their `--ratios` (default 1.0 each) and `--lbws`; counts must match."""
    if not models:
        raise ToolkitError("--models: give at least one LoRA file")
    if ratios is None or len(ratios) == 0:
        ratios = [1.0] * len(models)
    if len(ratios) != len(models):
        raise ToolkitError(f"--ratios: {len(ratios)} ratios for {len(models)} models; give one ratio per model")
    for r in ratios:
        if not math.isfinite(r):
            raise ToolkitError(f"--ratios {r}: must be a finite number (the merged weights would be {r})")
    sources = [open_source(p, r) for p, r in zip(models, ratios)]
    families = {s.family for s in sources if s.family}
    if len(families) > 1:
        listing = ", ".join(f"{s.path.name}: {'SDXL' if s.sdxl else 'SD1/SD2'}" for s in sources)
        raise ToolkitError(f"--models: LoRAs for different model families cannot be merged ({listing})")
    weights, lbw_sdxl = parse_lbws(list(lbws) if lbws else None, len(models))
    if weights is not None:
        if lbw_sdxl != sources[0].sdxl:
            want = "SDXL (12 or 20 values)" if lbw_sdxl else "SD1/SD2 (17 or 26 values)"
            have = "SDXL" if sources[0].sdxl else "SD1/SD2"
            raise ToolkitError(f"--lbws: the lists are for {want}, but the LoRAs are {have}")
        for s, w in zip(sources, weights):
            s.block_weights = w
    return sources


def ordered_names(sources: Sequence[LoRASource]) -> list[str]:
    """Union of module names, in first-seen order."""
    seen: dict[str, None] = {}
    for s in sources:
        seen.update(dict.fromkeys(s.names))
    return list(seen)


def as_2d_shape(shape: tuple[int, ...]) -> tuple[int, int, tuple[int, ...]]:
    """(out, in·kh·kw, kernel) of a delta shape; a 1x1 conv and a Linear give the same kernel ()."""
    kernel = tuple(shape[2:]) if len(shape) == 4 and tuple(shape[2:]) != (1, 1) else ()
    flat_in = shape[1] * (kernel[0] * kernel[1] if kernel else 1)
    return shape[0], flat_in, kernel


def check_same_layer(sources: Sequence[LoRASource], name: str) -> list[LoRASource]:
    """The inputs holding module `name`; their deltas must have one shape (1x1 conv vs Linear may differ)."""
    holders = [s for s in sources if name in s.down_shapes]
    shapes = {as_2d_shape(s.delta_shape(name)) for s in holders}
    if len(shapes) > 1:
        detail = ", ".join(f"{s.path.name}: {s.delta_shape(name)}" for s in holders)
        raise ToolkitError(f"module {name} has different layer shapes in the inputs ({detail}); "
                           "are the LoRAs made for different base models?")
    return holders

"""LoRA/LyCORIS files opened for merging: kinds, shapes and alphas up front, tensors one module at a time.

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

import library.adapters as A
from library.errors import ToolkitError
from library.files import LazySafetensors, open_streaming
from library.keys import family_of_lora
from library.lbw import block_weight, parse_lbws
from library.lora_io import ALPHA, DOWN, UP, LoRAFactors

log = logging.getLogger(__name__)


@dataclass
class LoRASource:
    """One input LoRA/LyCORIS file: where it is, how strongly it merges, and lazy access to its modules.

    Module kinds and shapes are known up front (from the header); tensors are read one module at a time.
    """

    path: Path
    ratio: float
    tensors: object  # LazySafetensors or an in-memory dict (.ckpt/.pt)
    metadata: dict[str, str]
    stand_ins: dict[str, dict[str, torch.Tensor]]  # module -> suffix -> meta tensor (alpha: the real value)
    algos: dict[str, str]
    block_weights: list[float] | None = None
    sdxl: bool = False
    family: str | None = field(default=None)

    @property
    def names(self) -> list[str]:
        return list(self.stand_ins)

    @property
    def title(self) -> str:
        return self.metadata.get("modelspec.title") or self.path.stem

    def is_plain(self, name: str) -> bool:
        """A LoRA/LoCon module without Tucker core or DoRA magnitude: up@down is its whole effect."""
        m = self.stand_ins[name]
        return self.algos[name] == A.LORA and "lora_mid.weight" not in m and not A.is_dora(m)

    def is_dora(self, name: str) -> bool:
        return A.is_dora(self.stand_ins[name])

    def rank(self, name: str) -> int:
        return A.rank_of(self.stand_ins[name]) or 0

    def delta_shape(self, name: str) -> tuple[int, ...]:
        """Shape of ΔW as the factors tell it: (out, in) or (out, in, kh, kw); flat LoHa/LoKr convs stay 2-D."""
        return A.natural_shape(self.stand_ins[name])

    def module(self, name: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The module's tensors, read now (cast to `dtype` except alpha)."""
        out = {}
        for suffix in self.stand_ins[name]:
            t = self.tensors[f"{name}.{suffix}"]
            out[suffix] = t if dtype is None or suffix == ALPHA else t.to(dtype)
        return out

    def factors(self, name: str, dtype: torch.dtype = torch.float32) -> LoRAFactors:
        """up/down/alpha of a plain LoRA module (missing or zero alpha: alpha = rank, scale 1)."""
        down = self.tensors[f"{name}.{DOWN}"].to(dtype)
        up = self.tensors[f"{name}.{UP}"].to(dtype)
        return LoRAFactors(down, up, A.scale_of(self.stand_ins[name]) * down.shape[0])

    def weight(self, name: str) -> float:
        """ratio · block weight: the strength this module merges with."""
        return self.ratio * self.lbw(name)

    def coef(self, name: str) -> float:
        """What multiplies the raw factor product in the merged delta: ratio · block weight · alpha/rank."""
        return self.weight(name) * A.scale_of(self.stand_ins[name])

    def lbw(self, name: str) -> float:
        return block_weight(self.block_weights, name, self.sdxl)


def _shape(tensors: object, key: str) -> tuple[int, ...]:
    return tensors.shape(key) if isinstance(tensors, LazySafetensors) else tuple(tensors[key].shape)


def open_source(path: str | os.PathLike, ratio: float = 1.0) -> LoRASource:
    """Open one LoRA/LyCORIS file lazily; every module is classified (unknown kinds refused) before any work."""
    path = Path(path)
    tensors, metadata = open_streaming(path)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key in tensors:
        name, dot, suffix = key.partition(".")
        if not dot:
            raise ToolkitError(f"{path}: tensor {key} is not a `<module>.<suffix>` key: not a LoRA file")
        if suffix == ALPHA:
            t = tensors[key]
            groups.setdefault(name, {})[suffix] = t
        else:
            groups.setdefault(name, {})[suffix] = torch.empty(_shape(tensors, key), device="meta")
    if not any(set(g) & A.MODULE_SUFFIXES for g in groups.values()):
        raise ToolkitError(f"{path}: not a LoRA file (no lora_down/lora_up, hada_*, lokr_* or diff tensors)")
    algos = {}
    for name, stand_in in groups.items():
        try:
            algos[name] = A.algorithm_of(stand_in, name)
        except ToolkitError as e:
            raise ToolkitError(f"{path}: {e}") from None
        if algos[name] == A.LORA:
            d, u = stand_in["lora_down.weight"].shape, stand_in["lora_up.weight"].shape
            if len(d) not in (2, 4) or len(u) != len(d) or u[1] != d[0]:
                raise ToolkitError(f"{path}: module {name}: lora_up {tuple(u)} and lora_down {tuple(d)} do not fit "
                                   "together")
    family = family_of_lora(groups)
    return LoRASource(path, float(ratio), tensors, dict(metadata), groups, algos, sdxl=family == "sdxl",
                      family=family)


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


def same_layer(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Two ΔW shapes fit one layer: same out and flat in; kernels must agree where both are known."""
    (oa, ia, ka), (ob, ib, kb) = as_2d_shape(a), as_2d_shape(b)
    return oa == ob and ia == ib and (ka == kb or len(a) == 2 or len(b) == 2)


def check_same_layer(sources: Sequence[LoRASource], name: str) -> list[LoRASource]:
    """The inputs holding module `name`; their deltas must have one shape (1x1 conv vs Linear may differ)."""
    holders = [s for s in sources if name in s.stand_ins]
    first = holders[0].delta_shape(name)
    shapes = {first} if all(same_layer(first, s.delta_shape(name)) for s in holders) else {0, 1}
    if len(shapes) > 1:
        detail = ", ".join(f"{s.path.name}: {s.delta_shape(name)}" for s in holders)
        raise ToolkitError(f"module {name} has different layer shapes in the inputs ({detail}); "
                           "are the LoRAs made for different base models?")
    return holders

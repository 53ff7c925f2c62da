"""The base checkpoint a LoRA was trained on: its weights by LoRA name, and their norms (cached on disk).

Names are mapped with `library.keys.checkpoint_targets`; a safetensors checkpoint is read lazily, one tensor
at a time, and only when a norm is missing from the cache or a recipe scores by `subspace`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

from library.errors import ToolkitError
from library.files import LazySafetensors, load_state_dict
from library.keys import Target, checkpoint_targets, detect_family
from library.lowrank import top_singular_value
from library.resize.decompose import Decomposed
from library.resize.norms_cache import NormsCache

log = logging.getLogger(__name__)


def weight_id(target: Target) -> str:
    """Cache key of a base weight: the checkpoint key, plus `[a:b]` for an OpenCLIP q/k/v row slice."""
    return target.key if target.rows is None else f"{target.key}[{target.rows[0]}:{target.rows[1]}]"


class BaseCheckpoint:
    """Lazy view of an original-layout single-file checkpoint, addressed by kohya LoRA names."""

    def __init__(self, path: str | os.PathLike, cache: NormsCache | None = None,
                 device: str | torch.device | None = None) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise ToolkitError(f"{self.path}: is a folder; give the single-file checkpoint (.safetensors or .ckpt) "
                               "the LoRA was trained on")
        if self.path.suffix.lower() == ".safetensors":
            self._sd = LazySafetensors(self.path, mmap=False)  # resident memory stays at about one tensor
            shapes = {k: self._sd.shape(k) for k in self._sd}
        else:
            self._sd, _ = load_state_dict(self.path)
            shapes = {k: tuple(v.shape) for k, v in self._sd.items()}
        self.family = detect_family(shapes)
        if self.family is None:
            raise ToolkitError(f"{self.path}: not a Stable Diffusion checkpoint in the original single-file layout "
                               "(no cond_stage_model./conditioner. text-encoder keys)")
        self.shapes = shapes
        self.targets = checkpoint_targets(shapes, self.family)
        self.cache = cache
        self.device = torch.device(device) if device else torch.device("cpu")
        self.tensors_read = 0
        self._last: tuple[str, torch.Tensor] | None = None

    def target(self, lora_name: str) -> Target | None:
        return self.targets.get(lora_name)

    def shape2d(self, target: Target) -> tuple[int, int]:
        shape = self.shapes[target.key]
        rows = shape[0] if target.rows is None else target.rows[1] - target.rows[0]
        return rows, math.prod(shape[1:])

    def fits(self, target: Target, layer: Decomposed) -> bool:
        """A LoRA layer fits its base weight when the flattened shapes agree (1x1 conv LoRA on Linear is fine)."""
        return self.shape2d(target) == (layer.out_features, layer.in_flat)

    def weight(self, target: Target) -> torch.Tensor:
        """Base weight as float32 [out, in·kh·kw] on the compute device (the last tensor read is kept)."""
        if self._last is None or self._last[0] != target.key:
            try:
                w = self._sd[target.key]
            except Exception as e:  # safetensors raises its own errors on damaged data
                raise ToolkitError(f"{self.path}: cannot read {target.key} ({e})") from None
            self.tensors_read += 1
            self._last = (target.key, w.to(self.device, torch.float32))
        w = self._last[1]
        if target.rows is not None:
            w = w[target.rows[0]:target.rows[1]]
        return w.reshape(w.shape[0], -1)

    def full_weight(self, lora_name: str) -> torch.Tensor | None:
        """The base weight module `lora_name` changes in its own shape (CPU float32), or None (DoRA needs it)."""
        target = self.target(lora_name)
        if target is None:
            return None
        shape = self.shapes[target.key]
        rows = shape[0] if target.rows is None else target.rows[1] - target.rows[0]
        return self.weight(target).reshape(rows, *shape[1:]).cpu()

    def cached_norm(self, target: Target, kind: str) -> float | None:
        """A norm ("fro" or "spn") from the cache, or None."""
        return self.cache.get(weight_id(target), kind) if self.cache is not None else None

    def store_norm(self, target: Target, kind: str, value: float) -> None:
        if self.cache is not None:
            self.cache.put(weight_id(target), kind, value)


# the base-weight norms a recipe can ask for: Frobenius (fro_ckpt) and spectral (spn_ckpt)
NORMS = {
    "fro": lambda w: float(torch.linalg.vector_norm(w)),
    "spn": top_singular_value,
}

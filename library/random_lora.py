"""Seeded random LoRAs that fit a given checkpoint, for tests and benchmarks of the merge tools."""

from __future__ import annotations

import os

import torch

from library.files import load_state_dict
from library.keys import checkpoint_targets, detect_family
from library.lora_io import LoRAFactors
from library.merge import tensor_shapes


def random_lora(checkpoint: str | os.PathLike, rank: int, alpha: float | None = None, conv_rank: int | None = None,
                conv_alpha: float | None = None, seed: int = 0, std: float = 0.05,
                te: bool = True) -> dict[str, LoRAFactors]:
    """Random down/up for every module training would create on `checkpoint` (LoCon extras with conv_rank).

    Linear and 1x1 modules get `rank`; with `conv_rank`, 3x3 convs get it and the ResNet Linear/1x1 parts get
    `rank`, as in C3Lier training. Factors are N(0, std²).
    """
    tensors, _ = load_state_dict(checkpoint, lazy=True)
    shapes = tensor_shapes(tensors)
    family = detect_family(shapes)
    g = torch.Generator().manual_seed(seed)
    modules = {}
    for name, t in checkpoint_targets(shapes, family).items():
        if t.group is None or (t.group == "c3lier" and conv_rank is None):
            continue
        if not te and name.startswith("lora_te"):
            continue
        shape = shapes[t.key]
        n_out = t.rows[1] - t.rows[0] if t.rows else shape[0]
        kxk = len(shape) == 4 and tuple(shape[2:]) != (1, 1)
        r = conv_rank if kxk else rank
        a = (conv_alpha if kxk else alpha) or float(r)
        down = torch.randn(r, *shape[1:], generator=g) * std
        up = torch.randn(n_out, r, *([1, 1] if len(shape) == 4 else []), generator=g) * std
        modules[name] = LoRAFactors(down, up, float(a))
    return modules

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


def random_lycoris(checkpoint: str | os.PathLike | dict[str, tuple[int, ...]], algo: str, dim: int,
                   alpha: float | None = None, factor: int = -1, conv: bool = False, tucker: bool = False,
                   decompose_both: bool = False, full_matrix: bool = False, dora: str | None = None, seed: int = 0,
                   std: float = 0.05, te: bool = True, only: str | None = None) -> dict[str, torch.Tensor]:
    """A seeded random LyCORIS state dict (`locon`, `loha` or `lokr`) with LyCORIS' key names, shapes and
    full-matrix rules for every module training would create on `checkpoint` (a file, or its key -> shape map;
    3x3 convs too with `conv`; `only`: names matching this regex); `dora` "in"/"out" adds a `dora_scale` on that
    axis (the base norm, perturbed; needs the file)."""
    import re

    from library.adapters import dora_magnitude, lokr_factorization

    if isinstance(checkpoint, dict):
        tensors, shapes = None, checkpoint
    else:
        tensors, _ = load_state_dict(checkpoint, lazy=True)
        shapes = tensor_shapes(tensors)
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    sd: dict[str, torch.Tensor] = {}
    for name, t in checkpoint_targets(shapes, detect_family(shapes)).items():
        if t.group is None or (t.group == "c3lier" and not conv) or (not te and name.startswith("lora_te")):
            continue
        if only is not None and not re.search(only, name):
            continue
        full = shapes[t.key]
        shape = ((t.rows[1] - t.rows[0]) if t.rows else full[0], *full[1:])
        out, inn, k = shape[0], shape[1], tuple(shape[2:])
        kxk = bool(k) and k != (1, 1)
        kk = k[0] * k[1] if k else 1
        r, a = dim, float(alpha if alpha is not None else dim)
        m: dict[str, torch.Tensor] = {}
        if algo == "locon":
            if tucker and kxk:
                m.update({"lora_down.weight": rnd(r, inn, 1, 1), "lora_mid.weight": rnd(r, r, *k)})
            else:
                m["lora_down.weight"] = rnd(r, inn, *k)
            m["lora_up.weight"] = rnd(out, r, 1, 1) if k else rnd(out, r)
        elif algo == "loha":
            for i in ("1", "2"):
                if tucker and kxk:
                    m.update({f"hada_w{i}_a": rnd(r, out), f"hada_w{i}_b": rnd(r, inn), f"hada_t{i}": rnd(r, r, *k)})
                else:
                    m.update({f"hada_w{i}_a": rnd(out, r), f"hada_w{i}_b": rnd(r, inn * kk)})
        else:
            (ol, ok), (im, i_n) = lokr_factorization(out, factor), lokr_factorization(inn, factor)
            if decompose_both and r < max(ol, im) / 2 and not full_matrix:
                m.update({"lokr_w1_a": rnd(ol, r), "lokr_w1_b": rnd(r, im)})
            else:
                m["lokr_w1"] = rnd(ol, im)
            if r >= max(ok, i_n) / 2 or full_matrix:
                m["lokr_w2"] = rnd(ok, i_n, *k)
            elif tucker and kxk:
                m.update({"lokr_w2_a": rnd(r, ok), "lokr_w2_b": rnd(r, i_n), "lokr_t2": rnd(r, r, *k)})
            else:
                m.update({"lokr_w2_a": rnd(ok, r), "lokr_w2_b": rnd(r, i_n * kk)})
            if "lokr_w1" in m and "lokr_w2" in m:
                a = float(dim)  # LyCORIS writes alpha = dim for all-full LoKr (scale 1)
        m["alpha"] = torch.tensor(a)
        if dora:
            w = tensors[t.key].float()
            w = w[t.rows[0]:t.rows[1]] if t.rows else w
            mag = dora_magnitude(w, dora == "out")
            m["dora_scale"] = mag * (1 + 0.1 * torch.rand(mag.shape, generator=g))
        sd.update({f"{name}.{s}": v.contiguous() for s, v in m.items()})
    return sd

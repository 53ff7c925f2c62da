"""LoRA files: parse modules out of a state dict, compose deltas, hash and save with kohya metadata.

A module is `<name>.lora_down.weight`, `<name>.lora_up.weight` and `<name>.alpha` (alpha = rank when
absent). Every writer goes through `save_lora`, which casts (alpha too), recomputes the sshs hashes after
the cast and writes atomically.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from library.adapters import MODULE_SUFFIXES, lora_delta
from library.errors import ToolkitError
from library.files import (
    load_state_dict,
    replace_metadata,
    safetensors_parts,
    save_state_dict,
    write_parts,
)
from library.finite import cast_for_save

DOWN, UP, ALPHA = "lora_down.weight", "lora_up.weight", "alpha"


@dataclass
class LoRAFactors:
    """One module of a LoRA file: factors as stored and the alpha that scales them."""

    down: torch.Tensor  # [r, in] or [r, in, kh, kw]
    up: torch.Tensor  # [out, r] or [out, r, 1, 1]
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def is_conv(self) -> bool:
        return self.down.ndim == 4

    @property
    def kernel_size(self) -> tuple[int, int]:
        return tuple(self.down.shape[2:]) if self.is_conv else (1, 1)

    def up2d(self) -> torch.Tensor:
        return self.up.reshape(self.up.shape[0], -1)

    def down2d(self) -> torch.Tensor:
        return self.down.reshape(self.down.shape[0], -1)

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """ΔW = (alpha/rank)·up@down shaped like the target weight ([out,in] or [out,in,kh,kw])."""
        return compose(self.up.to(dtype), self.down.to(dtype)) * self.scale


def compose(up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """up@down for Linear, 1x1 and kxk conv factors (conv up is always 1x1), from `library.adapters`."""
    return lora_delta(up, down)


def split_modules(sd: Mapping[str, torch.Tensor], path: str | os.PathLike = "<memory>") -> dict[str, LoRAFactors]:
    """Group a LoRA state dict into modules; a down without its up (or the reverse) is an error."""
    names = {k[: -len(DOWN) - 1] for k in sd if k.endswith("." + DOWN)}
    ups = {k[: -len(UP) - 1] for k in sd if k.endswith("." + UP)}
    if names != ups:
        odd = sorted(names ^ ups)[0]
        raise ToolkitError(f"{path}: module {odd} has lora_down without lora_up or the reverse")
    out = {}
    for n in sorted(names):
        down, up = sd[f"{n}.{DOWN}"], sd[f"{n}.{UP}"]
        if up.shape[1] != down.shape[0]:
            raise ToolkitError(f"{path}: module {n}: lora_up has {up.shape[1]} columns, lora_down {down.shape[0]} rows")
        a = sd.get(f"{n}.{ALPHA}")
        alpha = float(a) if a is not None else float(down.shape[0])
        out[n] = LoRAFactors(down, up, alpha if alpha != 0 else float(down.shape[0]))
    return out


def load_lora(path: str | os.PathLike, check_finite: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a LoRA/LyCORIS file; fails with the file's name when it holds no module tensors, or (unless
    `check_finite` is False, for inspection) a tensor with NaN/Inf."""
    sd, meta = load_state_dict(path, check_finite=check_finite)
    sd = dict(sd)
    if not any(k.partition(".")[2] in MODULE_SUFFIXES for k in sd):
        raise ToolkitError(f"{path}: not a LoRA file (no *.lora_down.weight, hada_*, lokr_* or diff tensors)")
    return sd, dict(meta)


def modules_to_state_dict(modules: Mapping[str, LoRAFactors]) -> dict[str, torch.Tensor]:
    """Flatten modules back to `<name>.lora_down.weight/lora_up.weight/alpha` (alpha always written)."""
    sd = {}
    for n, m in modules.items():
        sd[f"{n}.{DOWN}"] = m.down.contiguous()
        sd[f"{n}.{UP}"] = m.up.contiguous()
        sd[f"{n}.{ALPHA}"] = torch.tensor(float(m.alpha))
    return sd


def precalculate_hashes(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) of the file these tensors and `ss_*` metadata would make."""
    return _hashes(*safetensors_parts(sd, _ss_only(metadata)))


def _ss_only(metadata: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in metadata.items() if k.startswith("ss_")}


def _hashes(head: bytes, body: memoryview) -> tuple[str, str]:
    """SHA-256 of the tensor data, and the legacy 8-hex hash of bytes [1 MiB, 1 MiB + 64 KiB) of head+body."""
    lo, hi = 0x100000, 0x110000
    window = head[lo:hi] + bytes(body[max(0, lo - len(head)):max(0, hi - len(head))])
    return hashlib.sha256(body).hexdigest(), hashlib.sha256(window).hexdigest()[:8]


def cast_state_dict(sd: Mapping[str, torch.Tensor], dtype: torch.dtype | None,
                    output: str | os.PathLike = "<memory>") -> dict[str, torch.Tensor]:
    """Floating tensors cast to `dtype` (None: kept) for writing to `output`; refuses values that would be NaN
    or Inf in the file (`cast_for_save`)."""
    return {k: cast_for_save(v.detach(), dtype, output, k) for k, v in sd.items()}


def save_lora(path: str | os.PathLike, sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
              dtype: torch.dtype | None = None) -> None:
    """Cast, hash (after the cast) and write atomically; `.safetensors` keeps metadata, others are torch.save."""
    path = Path(path)
    sd = {k: v.cpu().contiguous() for k, v in cast_state_dict(sd, dtype, path).items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    if path.suffix.lower() == ".safetensors":  # one serialization serves the hash and the file
        head, body = safetensors_parts(sd, _ss_only(meta))
        meta["sshs_model_hash"], meta["sshs_legacy_hash"] = _hashes(head, body)
        write_parts(path, replace_metadata(head, meta), body)
    else:
        save_state_dict(sd, path)


def legacy_hash(path: str | os.PathLike) -> str:
    """The old 8-hex model hash (SHA-256 of 64 KiB at 1 MiB): cheap, and what sd-scripts writes as ss_sd_model_hash."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def file_hashes(path: str | os.PathLike) -> tuple[str, str]:
    """(old 8-hex hash: SHA-256 of 64 KiB at 1 MiB, full-file SHA-256) of a model file (ss_sd_model_hash)."""
    full = hashlib.sha256()
    legacy = legacy_hash(path)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            full.update(chunk)
    return legacy, full.hexdigest()

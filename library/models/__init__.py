"""Checkpoint I/O: SD1.x, SD2.x and SDXL from single files (original layout) or Diffusers folders."""

from __future__ import annotations

from pathlib import Path

import torch

from library.errors import ToolkitError
from library.models import fp8
from library.models.bundle import ModelBundle
from library.models.diffusers_dir import is_diffusers_dir, load_diffusers_dir, save_diffusers_dir
from library.models.single_file import (
    load_single_file,
    load_unet_file,
    load_vae_file,
    save_single_file,
    to_original_state_dict,
)


def family_from_flags(v2: bool = False, sdxl: bool = False) -> str | None:
    """`--v2`/`--sdxl` as a family override (None: detect from the keys)."""
    if v2 and sdxl:
        raise ToolkitError("--v2 and --sdxl cannot be given together")
    return "sdxl" if sdxl else ("sd2" if v2 else None)


def load_models(path: str | Path, family: str | None = None, v_parameterization: bool = False,
                dtype: torch.dtype | None = torch.float32, variant: str | None = None,
                progress: bool = False, keep_extra: bool = True, vae_dtype: torch.dtype | None = None,
                unet_dtype: torch.dtype | None = None, te_dtype: torch.dtype | None = None,
                with_unet: bool = True) -> ModelBundle:
    """Load a single-file checkpoint or a Diffusers folder; the family is detected unless given.

    `dtype=None` keeps the stored dtypes; `variant` (Diffusers folders) picks `*.<variant>.safetensors` weights;
    `progress` shows a bar while a single file is read (Diffusers' loaders show their own); `vae_dtype` (default
    `dtype`) lets a half-precision model keep a float32 VAE; `keep_extra=False` drops keys no model uses;
    `unet_dtype`/`te_dtype` store those parts otherwise (float8_e4m3fn: `library.models.fp8`).
    `with_unet=False`: a single file leaves the U-Net out (`unet` None; `load_unet_file` reads it later), a
    Diffusers folder loads it anyway.
    """
    path = Path(path)
    if path.is_dir():
        bundle = load_diffusers_dir(path, family, v_parameterization, dtype, variant, vae_dtype)
        for model, storage in ((bundle.unet, unet_dtype), *((te, te_dtype) for te in bundle.text_encoders)):
            if storage is fp8.FP8:
                fp8.narrow_module(model, dtype)
            elif storage is not None and storage != dtype:
                model.to(storage)
        return bundle
    if not path.exists():
        raise ToolkitError(f"{path}: model not found (give a .safetensors/.ckpt file or a Diffusers folder; "
                           "nothing is downloaded)")
    return load_single_file(path, family, v_parameterization, dtype, progress, keep_extra, vae_dtype, unet_dtype,
                            te_dtype, with_unet)


SINGLE_FILE_EXTS = (".safetensors", ".ckpt", ".pt", ".pth")


def is_single_file_path(path: str | Path) -> bool:
    """An output path with a checkpoint extension is a single file; anything else names a Diffusers folder."""
    return Path(path).suffix.lower() in SINGLE_FILE_EXTS


def peek_family(path: str | Path) -> str | None:
    """The family of a model without loading it (safetensors header keys, or a Diffusers folder's parts);
    None when only loading would tell (a `.ckpt`)."""
    path = Path(path)
    if path.is_dir():
        return "sdxl" if (path / "text_encoder_2").is_dir() else None
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return None
    from library.files import LazySafetensors
    from library.keys.families import detect_family

    return detect_family(LazySafetensors(path, mmap=False))


def save_models(bundle: ModelBundle, path: str | Path, dtype: torch.dtype | None = None,
                metadata: dict[str, str] | None = None, epoch: int = 0, global_step: int = 0,
                reference: str | Path | None = None) -> None:
    """Save as a single file (`.safetensors`/`.ckpt`) or, for a path without extension, a Diffusers folder.

    Both are streamed tensor by tensor and written atomically; `epoch`/`global_step` go into a `.ckpt`,
    `metadata` into a safetensors header, `reference` (a local Diffusers folder) supplies scheduler and tokenizers.
    """
    path = Path(path)
    if is_single_file_path(path):
        save_single_file(bundle, path, dtype, metadata, epoch, global_step)
    else:
        save_diffusers_dir(bundle, path, dtype, reference)


__all__ = ["ModelBundle", "family_from_flags", "is_diffusers_dir", "is_single_file_path", "load_models",
           "load_unet_file", "load_vae_file", "peek_family", "save_models", "to_original_state_dict"]

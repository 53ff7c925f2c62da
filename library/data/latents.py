"""Latent cache: VAE-encode each image once, keep the result in memory or in sd-scripts' `.npz` files.

File: `<image stem>_<W:04d>x<H:04d>_sd.npz` (`_sdxl.npz` for SDXL; W x H = original image size) holding `latents`
(float32 [4, h/8, w/8], raw VAE sample, not multiplied by the scale factor), `original_size`, `crop_ltrb`, with
flip_aug `latents_flipped`, and with a loss mask `alpha_mask` ([H, W] float 0..1 at bucket size, whichever
source the mask came from). A file is reused only when it has a mask exactly when one is needed, so turning
masks on or off re-encodes. A legacy `<stem>.npz` is used when present. Files are written atomically.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from library.data.buckets import Size
from library.data.images import resize_and_crop, to_tensor
from library.data.masks import load_pixels, split_mask
from library.errors import ToolkitError
from library.files import atomic_path
from library.models.arch import vae_scale_factor

log = logging.getLogger(__name__)
# what reading a damaged .npz raises: a zero-length or truncated file, a bad zip entry, a corrupt array header
NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)
SUFFIX = "_sd.npz"
SDXL_SUFFIX = "_sdxl.npz"  # SDXL's VAE differs: its latents never mix with SD1/SD2 files


def npz_path(image: Path, size: Size, suffix: str = SUFFIX) -> Path:
    legacy = image.with_suffix(".npz")
    if legacy.exists():
        return legacy
    return image.with_name(f"{image.stem}_{size[0]:04d}x{size[1]:04d}{suffix}")


def crop_ltrb(bucket: Size, image_size: Size) -> tuple[int, int, int, int]:
    """The image's box inside the bucket when fitted without cropping, centred (sd-scripts' get_crop_ltrb)."""
    image_ar = image_size[0] / image_size[1]
    if bucket[0] / bucket[1] > image_ar:
        w, h = bucket[1] * image_ar, bucket[1]
    else:
        w, h = bucket[0], bucket[0] / image_ar
    left, top = int((bucket[0] - w) // 2), int((bucket[1] - h) // 2)
    return left, top, int(left + w), int(top + h)


def load_npz(path: Path, bucket: Size, flip_aug: bool, check: bool = True, factor: int = 8,
             mask: bool = False) -> dict[str, torch.Tensor] | None:
    """Cached latents (and mask) if the file exists, has what is needed and fits the bucket; else None."""
    if not path.exists():
        return None
    try:
        with np.load(path) as npz:
            if "latents" not in npz or (flip_aug and "latents_flipped" not in npz):
                return None
            if check and mask != ("alpha_mask" in npz):
                return None
            out = {"latents": torch.from_numpy(npz["latents"].astype(np.float32))}
            if "latents_flipped" in npz:
                out["latents_flipped"] = torch.from_numpy(npz["latents_flipped"].astype(np.float32))
            if mask and "alpha_mask" in npz:
                out["mask"] = torch.from_numpy(npz["alpha_mask"].astype(np.float32))
    except NPZ_ERRORS as e:
        log.warning("%s: unreadable latent cache (%s); encoding again", path, str(e) or type(e).__name__)
        return None
    if not all(bool(torch.isfinite(t).all()) for t in out.values()):
        log.warning("%s: the cached latents hold NaN or Inf; encoding again", path)
        return None
    if check and tuple(out["latents"].shape[-2:]) != (bucket[1] // factor, bucket[0] // factor):
        return None
    return out


def save_npz(path: Path, latents: torch.Tensor, original_size: Size, ltrb: tuple[int, int, int, int],
             latents_flipped: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> None:
    arrays = {"latents": latents.float().cpu().numpy(), "original_size": np.array(original_size),
              "crop_ltrb": np.array(ltrb)}
    if latents_flipped is not None:
        arrays["latents_flipped"] = latents_flipped.float().cpu().numpy()
    if mask is not None:
        arrays["alpha_mask"] = mask.float().cpu().numpy()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


@torch.no_grad()
def encode(vae: torch.nn.Module, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Raw VAE latents (a sample of the posterior, as sd-scripts trains with) for images in [-1, 1]."""
    param = next(vae.parameters())
    dist = vae.encode(images.to(param.device, param.dtype)).latent_dist
    return dist.sample(generator=generator).float()


def cache_latents(records: Sequence, vae: torch.nn.Module, batch_size: int = 1, to_disk: bool = False,
                  skip_check: bool = False, seed: int = 0, show_progress: bool = True, rank: int = 0,
                  world: int = 1, suffix: str = SUFFIX) -> list:
    """Fill `record.latents` (and `latents_flipped` with flip_aug) for every record; returns the records that
    decoded (a broken image is skipped with a warning). With `to_disk` each rank encodes its share of files;
    the caller reads the rest back after a barrier via `load_cached`."""
    generator = torch.Generator(device=next(vae.parameters()).device).manual_seed(seed)
    factor = vae_scale_factor(vae)
    todo, precomputed = [], 0
    for i, r in enumerate(records):
        if to_disk:
            r.npz = npz_path(r.path, r.size, suffix)
            if load_npz(r.npz, r.bucket, r.subset.flip_aug, not skip_check, factor, r.has_mask) is not None \
                    or i % world != rank:
                continue
        elif r.npz is not None:  # precomputed latents of a metadata dataset (prepare_buckets_latents.py)
            data = load_npz(r.npz, r.bucket, r.subset.flip_aug, not skip_check, factor, r.has_mask)
            if data is not None:
                r.latents, r.latents_flipped, r.mask = data["latents"], data.get("latents_flipped"), data.get("mask")
                precomputed += 1
                continue
        todo.append(r)
    if precomputed:
        log.info("latents of %d images read from their .npz files (prepare_buckets_latents.py)", precomputed)
    by_bucket: dict[Size, list] = {}
    for r in todo:
        by_bucket.setdefault(r.bucket, []).append(r)
    bad = set()
    bar = tqdm(total=len(todo), desc="caching latents", disable=not show_progress or not todo, unit="img")
    for bucket, group in by_bucket.items():
        for start in range(0, len(group), batch_size):
            chunk = []
            for r in group[start:start + batch_size]:
                try:
                    chunk.append((r, *split_mask(resize_and_crop(load_pixels(r), r.resized, bucket,
                                                                 interpolation=r.subset.resize_interpolation))))
                except ToolkitError as e:
                    log.warning("%s; skipped", e)
                    bad.add(id(r))
            bar.update(len(group[start:start + batch_size]))
            if not chunk:
                continue
            pixels = torch.stack([to_tensor(img) for _, img, _ in chunk])
            latents = encode(vae, pixels, generator)
            flipped = encode(vae, pixels.flip(-1), generator) if any(r.subset.flip_aug for r, *_ in chunk) else None
            for k, (r, _, mask) in enumerate(chunk):
                lat_f = flipped[k] if flipped is not None and r.subset.flip_aug else None
                if to_disk:
                    save_npz(r.npz, latents[k], r.size, crop_ltrb(bucket, r.size), lat_f, mask)
                else:
                    r.latents, r.latents_flipped = latents[k].clone(), None if lat_f is None else lat_f.clone()
                    r.mask = mask
    bar.close()
    return [r for r in records if id(r) not in bad]


def load_cached(records: Sequence, skip_check: bool = False, factor: int = 8) -> list:
    """Read every record's latents back from its `.npz` (after all ranks have written theirs); `factor`: the
    VAE's pixels per latent cell."""
    kept = []
    for r in records:
        data = load_npz(r.npz, r.bucket, r.subset.flip_aug, not skip_check, factor, r.has_mask)
        if data is None or (r.has_mask and "mask" not in data):
            log.warning("%s: no usable latent cache (image skipped)", r.path)
            continue
        r.latents, r.latents_flipped, r.mask = data["latents"], data.get("latents_flipped"), data.get("mask")
        kept.append(r)
    return kept

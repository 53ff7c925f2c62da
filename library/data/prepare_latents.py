"""`finetune/prepare_buckets_latents.py`: give every image of a metadata file its bucket (`train_resolution`) and
its VAE latents in `<image stem>.npz` beside it, as sd-scripts does, so training reads latents instead of images.

The `.npz` files hold sd-scripts' keys (`latents` float32 [4, h/8, w/8] raw VAE sample, `original_size`,
`crop_ltrb`, `latents_flipped` with `--flip_aug`, `alpha_mask` with `--alpha_mask`), readable by both toolkits;
the buckets follow sd-scripts' rules (library/data/buckets.py) for `--max_resolution` and the bucket options.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from library.data.buckets import BucketSelector, Size
from library.data.config import SubsetConfig, parse_resolution
from library.data.images import image_size, resize_and_crop, to_tensor
from library.data.latents import crop_ltrb, encode, load_npz, save_npz
from library.data.masks import load_pixels, split_mask
from library.data.metadata import find_images, image_key, read_metadata, write_metadata
from library.errors import ToolkitError
from library.files import check_output_file

log = logging.getLogger(__name__)


@dataclass
class PrepareOptions:
    """The options of prepare_buckets_latents.py (sd-scripts' names and defaults)."""

    batch_size: int = 1
    max_resolution: str = "512,512"
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    mixed_precision: str = "no"
    full_path: bool = False
    flip_aug: bool = False
    alpha_mask: bool = False
    skip_existing: bool = False
    recursive: bool = False


@dataclass(eq=False)
class _Item:
    """One image to encode (shaped like a training record for load_pixels)."""

    path: Path
    size: Size
    bucket: Size
    resized: Size
    subset: SubsetConfig
    npz: Path
    mask_path: Path | None = None


def load_vae(model: str | Path, dtype: torch.dtype) -> torch.nn.Module:
    """The VAE of a checkpoint, of a VAE-only file or of a Diffusers folder (its `vae/` part)."""
    from library.models import load_vae_file, peek_family

    path = Path(model)
    if path.is_dir():
        from diffusers import AutoencoderKL

        folder = path / "vae" if (path / "vae").is_dir() else path
        if not (folder / "config.json").is_file():
            raise ToolkitError(f"model_name_or_path {path}: no VAE in this folder (vae/config.json)")
        return AutoencoderKL.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
    if not path.is_file():
        raise ToolkitError(f"model_name_or_path {path}: not found (a checkpoint, a VAE file or a Diffusers folder; "
                           "nothing is downloaded)")
    return load_vae_file(path, peek_family(path) or "sd1", dtype)


def _check(train_data_dir: Path, in_json: Path, out_json: Path, model: Path,
           o: PrepareOptions) -> tuple[Size, torch.dtype]:
    """Everything that can be refused before the VAE loads."""
    if not model.exists():
        raise ToolkitError(f"model_name_or_path {model}: not found (a checkpoint, a VAE file or a Diffusers "
                           "folder; nothing is downloaded)")
    if o.recursive and not o.full_path:
        raise ToolkitError("--recursive needs --full_path (keys of images in sub-folders must be paths)")
    if not train_data_dir.is_dir():
        raise ToolkitError(f"train_data_dir {train_data_dir}: folder not found")
    if not in_json.is_file():
        raise ToolkitError(f"in_json {in_json}: file not found (make it with merge_captions_to_metadata.py)")
    check_output_file(out_json, "out_json")
    if o.batch_size < 1:
        raise ToolkitError(f"--batch_size {o.batch_size}: must be at least 1")
    if o.bucket_reso_steps % 8:
        log.warning("bucket_reso_steps %d is not a multiple of 8: training sizes are multiples of 8",
                    o.bucket_reso_steps)
    if o.bucket_reso_steps % 32:
        log.warning("bucket_reso_steps %d is not a multiple of 32: SDXL cannot train these buckets",
                    o.bucket_reso_steps)
    dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(o.mixed_precision)
    if dtype is None:
        raise ToolkitError(f"--mixed_precision {o.mixed_precision}: use no, fp16 or bf16")
    if dtype == torch.float16 and not torch.cuda.is_available():
        raise ToolkitError("--mixed_precision fp16 needs a CUDA GPU; on CPU use bf16 or no")
    return parse_resolution(o.max_resolution, "--max_resolution"), dtype


def _encode_group(vae: torch.nn.Module, items: list[_Item], flip: bool, generator: torch.Generator) -> None:
    chunk = [(it, *split_mask(resize_and_crop(load_pixels(it), it.resized, it.bucket))) for it in items]
    pixels = torch.stack([to_tensor(img) for _, img, _ in chunk])
    latents = encode(vae, pixels, generator)
    flipped = encode(vae, pixels.flip(-1), generator) if flip else None
    for k, (it, _, mask) in enumerate(chunk):
        if not torch.isfinite(latents[k]).all() or (flipped is not None and not torch.isfinite(flipped[k]).all()):
            raise ToolkitError(f"{it.path}: the VAE gave NaN/Inf latents (try --mixed_precision no)")
        save_npz(it.npz, latents[k], it.size, crop_ltrb(it.bucket, it.size),
                 None if flipped is None else flipped[k], mask)


def prepare_buckets_latents(train_data_dir: str | Path, in_json: str | Path, out_json: str | Path,
                            model: str | Path, o: PrepareOptions) -> dict[str, dict]:
    """Buckets into the metadata and latents into `.npz` files for every image of `train_data_dir`."""
    train_data_dir, in_json, out_json = Path(train_data_dir), Path(in_json), Path(out_json)
    max_reso, dtype = _check(train_data_dir, in_json, out_json, Path(model), o)
    metadata = read_metadata(in_json, "in_json")
    selector = BucketSelector(max_reso, True, o.min_bucket_reso, o.max_bucket_reso, o.bucket_reso_steps,
                              o.bucket_no_upscale)
    subset = SubsetConfig(train_data_dir, flip_aug=o.flip_aug, alpha_mask=o.alpha_mask)
    images = find_images(train_data_dir, o.recursive)
    log.info("found %d images in %s", len(images), train_data_dir)
    groups: dict[Size, list[_Item]] = {}
    counts: Counter = Counter()
    errors = []
    for path in images:
        size = image_size(path)
        if size is None:
            continue
        a = selector.select(*size)
        counts[a.bucket] += 1
        errors.append(a.ar_error)
        # the bucket in latent units (multiples of 8), as sd-scripts records it
        metadata.setdefault(image_key(path, o.full_path), {})["train_resolution"] = [
            a.bucket[0] - a.bucket[0] % 8, a.bucket[1] - a.bucket[1] % 8]
        item = _Item(path, size, a.bucket, a.resized, subset, path.with_suffix(".npz"))
        if o.skip_existing and load_npz(item.npz, a.bucket, o.flip_aug, mask=o.alpha_mask) is not None:
            continue
        groups.setdefault(a.bucket, []).append(item)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    todo = sum(len(g) for g in groups.values())
    if todo:
        vae = load_vae(model, dtype).to(device).eval().requires_grad_(False)
        generator = torch.Generator(device=device).manual_seed(0)
        with tqdm(total=todo, desc="latents", unit="img") as bar:
            for items in groups.values():
                for start in range(0, len(items), o.batch_size):
                    _encode_group(vae, items[start:start + o.batch_size], o.flip_aug, generator)
                    bar.update(len(items[start:start + o.batch_size]))
    for bucket, n in sorted(counts.items()):
        log.info("bucket %dx%d: %d images", *bucket, n)
    if errors:
        log.info("mean aspect-ratio error: %.4f", float(np.mean(errors)))
    write_metadata(out_json, metadata)
    log.info("wrote %s (%d latent files written, %d kept)", out_json, todo, len(images) - todo)
    return metadata

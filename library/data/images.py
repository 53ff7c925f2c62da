"""Reading training images and turning them into bucket-sized tensors (resize to cover, crop, augment)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from library.data.buckets import Size, crop_offsets
from library.errors import ToolkitError

log = logging.getLogger(__name__)

_INTERPOLATION = {
    "lanczos": cv2.INTER_LANCZOS4, "nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR,
    "linear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA,
}
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError, SyntaxError)


def image_size(path: Path) -> Size | None:
    """(width, height) from the file header; None (with a warning) when the file is not a readable image."""
    try:
        with Image.open(path) as img:
            return img.size
    except _DECODE_ERRORS as e:
        log.warning("%s: not a readable image (%s); skipped", path, str(e).splitlines()[0][:120])
        return None


def load_rgb(path: Path) -> np.ndarray:
    """Decode an image to an RGB uint8 array (alpha dropped); a broken file raises ToolkitError naming it."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except _DECODE_ERRORS as e:
        raise ToolkitError(f"{path}: image does not decode ({str(e).splitlines()[0][:120]})") from None


def check_interpolation(name: str | None) -> None:
    if name is not None and name not in _INTERPOLATION:
        raise ToolkitError(f"resize_interpolation {name!r}: use one of {', '.join(sorted(_INTERPOLATION))}")


def choose_crop(resized: Size, bucket: Size, random_crop: bool = False,
                rng: random.Random | None = None) -> tuple[int, int]:
    """(left, top) of the bucket inside the resized image: random with `random_crop`, else centred."""
    if random_crop and rng is not None:
        left = rng.randint(0, resized[0] - bucket[0])
        top = rng.randint(0, resized[1] - bucket[1])
        return left, top
    return crop_offsets(resized, bucket)


def resize_and_crop(img: np.ndarray, resized: Size, bucket: Size, random_crop: bool = False,
                    rng: random.Random | None = None, interpolation: str | None = None,
                    offset: tuple[int, int] | None = None) -> np.ndarray:
    """Resize to `resized` (area when shrinking, lanczos when enlarging, unless named) and crop to `bucket`
    at `offset` (left, top), or at `choose_crop`'s offset when none is given."""
    h, w = img.shape[:2]
    if (w, h) != tuple(resized):
        if interpolation is not None:
            flag = _INTERPOLATION[interpolation]
        else:
            flag = cv2.INTER_AREA if resized[0] * resized[1] < w * h else cv2.INTER_LANCZOS4
        img = cv2.resize(img, tuple(resized), interpolation=flag)
    left, top = offset if offset is not None else choose_crop(resized, bucket, random_crop, rng)
    return img[top:top + bucket[1], left:left + bucket[0]]


def color_aug(img: np.ndarray, rng: random.Random) -> np.ndarray:
    """sd-scripts' colour augmentation: a third of the time, a small hue shift or a small gamma change."""
    if rng.random() > 0.33:
        return img
    if rng.random() > 0.5:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        shift = rng.uniform(-8, 8) % 180
        hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.float32) + shift) % 180).astype(np.uint8)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    gamma = rng.uniform(0.95, 1.05)
    return np.clip(img.astype(np.float32) ** gamma, 0, 255).astype(np.uint8)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HWC uint8 -> CHW float in [-1, 1] (what the VAE expects)."""
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()
    return t / 127.5 - 1.0

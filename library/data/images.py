"""Reading training images and turning them into bucket-sized tensors (resize to cover, crop, augment)."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from library.data.buckets import Size, crop_offsets
from library.errors import ToolkitError

if TYPE_CHECKING:
    import torch

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


_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit greyscale (PNG, TIFF); "I" holds the same range


def to_rgb8(img: Image.Image) -> np.ndarray:
    """Any PIL image as an HxWx3 uint8 RGB array with the brightness the file means.

    Pillow's own `convert("RGB")` clips 16-bit greyscale at 255 (almost white) and ignores a CMYK file's colour
    profile; here 16-bit values are scaled (v/257), float images read as 0..1 (or 0..255 when larger), a CMYK
    image with an ICC profile goes through it to sRGB, and alpha is dropped (the stored colour is kept, as
    sd-scripts does). Palette, 1-bit, LA, RGBA, YCbCr and 8-bit images convert as usual.
    """
    if img.mode in _WIDE_GREY:
        grey = np.asarray(img).astype(np.float64) / 257.0
        return np.repeat(_to_uint8(grey)[:, :, None], 3, axis=2)
    if img.mode == "F":
        grey = np.nan_to_num(np.asarray(img, dtype=np.float64))
        grey = grey * 255.0 if grey.max(initial=0.0) <= 1.0 else grey
        return np.repeat(_to_uint8(grey)[:, :, None], 3, axis=2)
    if img.mode == "CMYK" and img.info.get("icc_profile"):
        converted = _cmyk_through_profile(img)
        if converted is not None:
            return converted
    return np.array(img.convert("RGB"))


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _cmyk_through_profile(img: Image.Image) -> np.ndarray | None:
    from io import BytesIO

    from PIL import ImageCms

    try:
        source = ImageCms.ImageCmsProfile(BytesIO(img.info["icc_profile"]))
        rgb = ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        return np.array(rgb)
    except (ImageCms.PyCMSError, OSError, ValueError) as e:
        log.debug("CMYK profile not usable (%s); converting without it", e)
        return None


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 RGB (`to_rgb8`); decode errors propagate (callers choose to skip)."""
    with Image.open(path) as img:
        return to_rgb8(img)


def load_rgb(path: Path) -> np.ndarray:
    """Decode an image to an RGB uint8 array (`to_rgb8`); a broken file raises ToolkitError naming it.

    The one image reader of training and the image tools."""
    try:
        return read_rgb(path)
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
    import torch  # here, so the image tools do not pay for importing torch

    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()
    return t / 127.5 - 1.0

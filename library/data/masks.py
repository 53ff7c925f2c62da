"""Loss masks (`--masked_loss`): a mask image per training image from the subset's `conditioning_data_dir`
(matched by file name, any size, its red channel read as the weight: white trains, black is ignored, as
sd-scripts reads it) or the image's own alpha channel (`alpha_mask`).

The mask is stacked onto the image as a fourth channel before resizing, cropping and flipping, so it always
covers the same pixels as its image. A missing or unreadable mask stops the run with one line naming the image.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from library.data.folders import glob_images
from library.data.images import _DECODE_ERRORS, load_rgb
from library.errors import ToolkitError

log = logging.getLogger(__name__)


def mask_folder_index(folder: Path) -> dict[str, Path]:
    """Mask images of a `conditioning_data_dir` by file stem (first one wins when two extensions share a stem)."""
    if not folder.is_dir():
        raise ToolkitError(f"conditioning_data_dir {folder}: folder not found")
    index: dict[str, Path] = {}
    for p in glob_images(folder):
        index.setdefault(p.stem, p)
    return index


def attach_masks(records: list, folder: Path | None) -> None:
    """Give each record (of one subset) its mask file; the first image without one stops the run."""
    if folder is None:
        return
    index = mask_folder_index(folder)
    for r in records:
        r.mask_path = index.get(r.path.stem)
        if r.mask_path is None:
            raise ToolkitError(f"{r.path}: no mask named {r.path.stem}.png (or .jpg, .webp, ...) in "
                               f"conditioning_data_dir {folder}")
        try:  # decoded once here, so a file that is not an image or an all-black mask stops before heavy work
            with Image.open(r.mask_path) as m:
                black = m.convert("RGB").getextrema()[0][1] == 0  # the red channel is the mask, as in sd-scripts
        except _DECODE_ERRORS as e:
            raise ToolkitError(f"{r.path}: mask {r.mask_path} is not a readable image "
                               f"({str(e).splitlines()[0][:120]})") from None
        if black:
            raise ToolkitError(f"{r.mask_path}: the mask is all black, so nothing of {r.path.name} would train; "
                               "white marks what trains")


def check_alpha(records: list, alpha_mask: bool) -> None:
    """`alpha_mask`: one warning for the images with no alpha channel (they train on every pixel, as if unmasked);
    an image whose alpha is all transparent stops the run (nothing of it would train). Reads headers, and decodes
    only the alpha of images that have one."""
    if not alpha_mask or not records:
        return
    without = []
    for r in records:
        try:
            with Image.open(r.path) as img:
                if not (img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info):
                    without.append(r.path.name)
                elif img.convert("RGBA").getextrema()[3][1] == 0:
                    raise ToolkitError(f"{r.path}: alpha_mask: the image is fully transparent, so nothing of it "
                                       "would train")
        except _DECODE_ERRORS:
            continue  # reported, with its reason, where the image is read
    if without:
        log.warning("%s: alpha_mask: %d of %d images have no alpha channel and train on every pixel (e.g. %s)",
                    records[0].path.parent, len(without), len(records), without[0])


def _read_mask(image: Path, mask: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(mask) as m:
            channel = np.array(m.convert("RGB"))[:, :, 0]
    except _DECODE_ERRORS as e:
        raise ToolkitError(f"{image}: mask {mask} does not decode ({str(e).splitlines()[0][:120]})") from None
    if (channel.shape[1], channel.shape[0]) != tuple(size):  # any size: fitted to the image first
        shrink = channel.shape[0] * channel.shape[1] > size[0] * size[1]
        channel = cv2.resize(channel, tuple(size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return channel


def _read_alpha(image: Path) -> np.ndarray:
    try:
        with Image.open(image) as img:
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                return np.array(img.convert("RGBA"))[:, :, 3]
            return np.full((img.height, img.width), 255, dtype=np.uint8)  # no alpha: everything trains
    except _DECODE_ERRORS as e:
        raise ToolkitError(f"{image}: image does not decode ({str(e).splitlines()[0][:120]})") from None


def load_pixels(record) -> np.ndarray:  # noqa: ANN001 - ImageRecord
    """The record's image as HxWx3 uint8, or HxWx4 with its mask as the fourth channel when it has one."""
    rgb = load_rgb(record.path)
    if record.mask_path is not None:
        mask = _read_mask(record.path, record.mask_path, (rgb.shape[1], rgb.shape[0]))
    elif record.subset.alpha_mask:
        mask = _read_alpha(record.path)
    else:
        return rgb
    return np.concatenate([rgb, mask[:, :, None]], axis=2)


def split_mask(pixels: np.ndarray) -> tuple[np.ndarray, torch.Tensor | None]:
    """(HxWx3 image, [H, W] float mask in 0..1 or None) from `load_pixels` output after resizing/cropping."""
    if pixels.shape[2] == 3:
        return pixels, None
    mask = torch.from_numpy(np.ascontiguousarray(pixels[:, :, 3])).float() / 255.0
    return np.ascontiguousarray(pixels[:, :, :3]), mask


def batch_masks(masks: list[torch.Tensor | None], shape: tuple[int, int]) -> torch.Tensor | None:
    """[B, H, W] masks of a batch; samples without a mask weigh every pixel 1 (None when no sample has one)."""
    if all(m is None for m in masks):
        return None
    return torch.stack([torch.ones(shape) if m is None else m for m in masks])

"""Face-crop augmentation (`--face_crop_aug_range LOW,HIGH`), sd-scripts' convention and crop math.

An image named `<name>_<cx>_<cy>_<w>_<h>.<ext>` carries the face's centre and size in pixels of the file's own
image (the last four `_` parts; its caption may be `<name>.caption`). Each time it is used, the image is scaled so
the face's larger side becomes about `short / HIGH` .. `short / LOW` pixels of the training size's shorter side
(never enlarged, never smaller than the training size), then cropped to the training size around the face, with
a small jitter when LOW < HIGH (or a wide one with random_crop). Used without buckets and without cached
latents, as in sd-scripts; images without face numbers are used as usual.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from library.data.buckets import Size
from library.data.images import resize_and_crop

Face = tuple[int, int, int, int]  # centre x, centre y, width, height in the image's pixels


def face_from_name(path: Path) -> Face | None:
    """(cx, cy, w, h) from a `<name>_<cx>_<cy>_<w>_<h>` file stem, or None when the stem has no face numbers."""
    parts = path.stem.split("_")
    if len(parts) < 5:
        return None
    try:
        cx, cy, w, h = (int(p) for p in parts[-4:])
    except ValueError:
        return None
    return (cx, cy, w, h) if cx > 0 else None


def face_crop_box(image_size: Size, target: Size, face: Face, face_range: tuple[float, float],
                  random_crop: bool, rng: random.Random) -> tuple[Size, tuple[int, int]]:
    """(scaled image size, crop (left, top)) of one face crop: sd-scripts' crop_target, step for step."""
    width, height = image_size
    tw, th = target
    cx, cy, fw, fh = face
    face_size = max(fw, fh)
    short = min(tw, th)
    min_scale = max(th / height, tw / width)  # the image just covers the target
    min_scale = min(1.0, max(min_scale, short / (face_size * face_range[1])))
    max_scale = min(1.0, max(min_scale, short / (face_size * face_range[0])))
    scale = min_scale if min_scale >= max_scale else rng.uniform(min_scale, max_scale)
    nw, nh = int(width * scale + 0.5), int(height * scale + 0.5)
    centre = (int(cx * scale + 0.5), int(cy * scale + 0.5))
    offsets = []
    for target_len, length, p in zip((tw, th), (nw, nh), centre):
        p1 = p - target_len // 2  # the face in the middle
        if random_crop:  # shift towards the background, most often a little
            span = max(length - p, p)
            p1 += rng.randint(0, span) + rng.randint(0, span) - span
        elif face_range[0] != face_range[1] and face_size > short // 10 and face_size >= 40:
            p1 += rng.randint(-face_size // 20, face_size // 20)
        offsets.append(max(0, min(p1, length - target_len)))
    return (nw, nh), (offsets[0], offsets[1])


def face_crop(img: np.ndarray, target: Size, face: Face, face_range: tuple[float, float], random_crop: bool,
              rng: random.Random, interpolation: str | None = None) -> tuple[np.ndarray, Size, tuple[int, int]]:
    """The `target`-sized face crop of an HxWxC image, the size the image was scaled to and the crop's
    (left, top) in it."""
    h, w = img.shape[:2]
    if (w, h) == tuple(target):
        return img, (w, h), (0, 0)
    scaled, offset = face_crop_box((w, h), target, face, face_range, random_crop, rng)
    if scaled[0] < target[0] or scaled[1] < target[1]:  # smaller than the training size: cover it first
        scale = max(target[0] / w, target[1] / h)
        scaled = (max(target[0], int(w * scale + 0.5)), max(target[1], int(h * scale + 0.5)))
        offset = (min(offset[0], scaled[0] - target[0]), min(offset[1], scaled[1] - target[1]))
    return resize_and_crop(img, scaled, target, interpolation=interpolation, offset=offset), scaled, offset

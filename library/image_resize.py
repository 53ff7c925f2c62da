"""Shrink a folder of training images to one or more target areas (tools/resize_images_to_resolution.py).

Only the area W*H of each target matters: an image larger than the area is scaled down keeping its aspect
ratio, a smaller one is never upscaled. Both sides are then cropped (centred) down to a multiple of
`divisible_by`. Targets are applied in the order given, each starting from the previous result, so a list
from large to small shrinks progressively.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from library.data.images import read_rgb
from library.errors import ToolkitError
from library.files import atomic_path, check_output_dir
from library.options.choices import INTERPOLATIONS

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_CV2 = {"area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR,
        "nearest": cv2.INTER_NEAREST_EXACT}
_PIL = {"lanczos4": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX}


@dataclass(frozen=True)
class Target:
    """One `WxH` entry of --max_resolution; `label` is the text as given, used in the output name."""

    width: int
    height: int
    label: str

    @property
    def area(self) -> int:
        return self.width * self.height


def parse_resolutions(text: str) -> list[Target]:
    """`512x512,384x384` -> targets; a malformed entry is a ToolkitError naming it."""
    targets = []
    for item in (s.strip() for s in text.split(",")):
        m = re.fullmatch(r"(\d+)[xX](\d+)", item)
        if not m or int(m.group(1)) <= 0 or int(m.group(2)) <= 0:
            raise ToolkitError(f"--max_resolution: {item!r} is not WIDTHxHEIGHT (e.g. 512x512,384x384)")
        targets.append(Target(int(m.group(1)), int(m.group(2)), item))
    return targets


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def fit_size(width: int, height: int, area: int) -> tuple[int, int]:
    """The size after shrinking to at most `area` pixels with the aspect kept (sides floored); never larger."""
    if width * height <= area:
        return width, height
    f = math.sqrt(area / (width * height))
    return max(1, int(width * f)), max(1, int(height * f))


def resize(img: np.ndarray, size: tuple[int, int], interpolation: str | None) -> np.ndarray:
    """Resize an HxWx3 uint8 RGB array to `size` (w, h); None picks `area` (best for shrinking)."""
    name = interpolation or "area"
    if name in _PIL:
        return np.asarray(Image.fromarray(img).resize(size, _PIL[name]))
    return cv2.resize(img, size, interpolation=_CV2[name])


def center_crop_to_multiple(img: np.ndarray, divisible_by: int) -> np.ndarray:
    """Crop both sides down to a multiple of `divisible_by`, keeping the centre."""
    h, w = img.shape[:2]
    new_h, new_w = h - h % divisible_by, w - w % divisible_by
    if new_h == 0 or new_w == 0:
        raise ValueError(f"{w}x{h} is smaller than --divisible_by {divisible_by}")
    y, x = (h - new_h) // 2, (w - new_w) // 2
    return img[y:y + new_h, x:x + new_w]


def _save(img: np.ndarray, path: Path, as_png: bool) -> None:
    with atomic_path(path) as tmp:
        if as_png:
            Image.fromarray(img).save(tmp, format="PNG")
        else:
            Image.fromarray(img).save(tmp, format="JPEG", quality=100)


def resize_file(src: Path, dst_dir: Path, targets: Sequence[Target], divisible_by: int = 1,
                interpolation: str | None = None, save_as_png: bool = False) -> list[Path]:
    """Write one shrunk copy of `src` per target as `<stem>+<WxH>.png|.jpg`; returns the written paths."""
    img = read_rgb(src)
    written = []
    for target in targets:
        h, w = img.shape[:2]
        new_w, new_h = fit_size(w, h, target.area)
        resized = (new_w, new_h) != (w, h)
        if resized:
            img = resize(img, (new_w, new_h), interpolation)
        img = center_crop_to_multiple(img, divisible_by)
        out = dst_dir / f"{src.stem}+{target.label}{'.png' if save_as_png else '.jpg'}"
        _save(img, out, save_as_png)
        log.info("%s image: %s with size %dx%d as %s", "Resized" if resized else "Saved", src.name,
                 img.shape[0], img.shape[1], out.name)
        written.append(out)
    return written


def copy_associated(src: Path, dst_dir: Path, targets: Sequence[Target]) -> list[Path]:
    """Copy every non-image `<stem>.*` beside `src` (captions, tags) as `<stem>+<WxH><ext>` per target."""
    written = []
    for other in sorted(src.parent.glob(f"{glob_escape(src.stem)}.*")):
        if other == src or not other.is_file() or is_image(other):
            continue
        for target in targets:
            out = dst_dir / f"{src.stem}+{target.label}{other.suffix}"
            with atomic_path(out) as tmp:
                shutil.copyfile(other, tmp)
            written.append(out)
    return written


def glob_escape(text: str) -> str:
    """Escape glob metacharacters so a file stem like `a[1]` matches only itself."""
    return re.sub(r"([\[\]*?])", r"[\1]", text)


def resize_folder(src_dir: str | Path, dst_dir: str | Path, targets: Sequence[Target], divisible_by: int = 1,
                  interpolation: str | None = None, save_as_png: bool = False,
                  copy_associated_files: bool = False) -> dict[str, int]:
    """Process every image directly in `src_dir` (not recursive); other files are skipped.

    An image that cannot be read is reported with a warning and skipped; the rest are still processed.
    Returns counts: `images`, `written`, `failed`, `copied`.
    """
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    if not src_dir.is_dir():
        raise ToolkitError(f"{src_dir}: source folder not found")
    if divisible_by < 1:
        raise ToolkitError(f"--divisible_by must be 1 or more, got {divisible_by}")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise ToolkitError(f"--interpolation {interpolation!r}: use one of {', '.join(INTERPOLATIONS)}")
    if not targets:
        raise ToolkitError("--max_resolution: no resolution given")
    check_output_dir(dst_dir, "dst_img_folder")
    dst_dir.mkdir(parents=True, exist_ok=True)
    images = sorted(p for p in src_dir.iterdir() if p.is_file() and is_image(p))
    counts = {"images": len(images), "written": 0, "failed": 0, "copied": 0}
    stems: dict[str, Path] = {}
    for path in tqdm(images, desc="resizing", unit="img"):
        if path.stem in stems:
            log.warning("%s and %s share the name %r: the outputs of the second replace the first's",
                        stems[path.stem].name, path.name, path.stem)
        stems[path.stem] = path
        try:
            counts["written"] += len(resize_file(path, dst_dir, targets, divisible_by, interpolation, save_as_png))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            log.warning("%s: cannot read or resize this image, skipped (%s)", path, e)
            counts["failed"] += 1
            continue
        if copy_associated_files:
            counts["copied"] += len(copy_associated(path, dst_dir, targets))
    log.info("%d images, %d files written, %d associated files copied, %d failed", counts["images"],
             counts["written"], counts["copied"], counts["failed"])
    return counts

"""Deterministic procedural sample dataset for the quickstart and for tests.

Every image shows the same concept (a red circle, trigger phrase ``sks circle``) at a varied position and size, on a
plain or gradient background, sometimes with distractor shapes. The output follows the sd-scripts DreamBooth layout
(``img/<repeats>_<concept>/NNNN.png`` with a ``NNNN.caption`` next to each image) and, optionally, mixes in landscape
and portrait images so aspect-ratio bucketing has something to do. Identical arguments give byte-identical files.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["CONCEPT", "REPEATS", "image_sizes", "make_sample_dataset", "make_sample_masks"]

CONCEPT = "sks circle"
REPEATS = 10
SUPERSAMPLE = 4  # shapes are drawn at 4x and downscaled for smooth edges

CONCEPT_RGB = (220, 30, 30)
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "blue": (40, 70, 190),
    "green": (50, 150, 70),
    "yellow": (235, 210, 60),
    "purple": (120, 60, 160),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "teal": (30, 140, 140),
    "black": (15, 15, 15),
}
DISTRACTOR_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "orange": (245, 140, 20),
    "cyan": (60, 200, 230),
    "pink": (240, 150, 190),
    "brown": (120, 80, 40),
}
SIZES: tuple[tuple[str, float], ...] = (("small", 0.12), ("medium", 0.2), ("large", 0.3))  # radius / short side


@dataclass(frozen=True)
class _Scene:
    """Everything needed to render one image and write its caption."""

    width: int
    height: int
    bg_top: str
    bg_bottom: str | None  # None: plain background
    size_name: str
    radius_frac: float
    centre: tuple[float, float]  # fractions of width/height
    distractors: tuple[tuple[str, str, tuple[float, float, float]], ...]  # (shape, colour, (x, y, size) fractions)


def _pick(rng: random.Random, options: Sequence[T]) -> T:
    """Choose an element using only ``rng.random()``, whose output is stable across Python versions."""
    return options[min(int(rng.random() * len(options)), len(options) - 1)]


def _round8(value: float) -> int:
    """Round to the nearest multiple of 8 (at least 8), matching latent-friendly image sizes."""
    return max(8, int(round(value / 8.0)) * 8)


def image_sizes(num_images: int, resolution: int = 64, aspect_ratios: bool = True) -> list[tuple[int, int]]:
    """Return the (width, height) of each image: squares, plus 3:2 landscape / 2:3 portrait ones if requested.

    With aspect ratios on, every fourth image starting at index 1 is landscape and every fourth starting at index 3
    is portrait; the rest are square.
    """
    wide = _round8(resolution * 1.5)
    sizes = []
    for i in range(num_images):
        if aspect_ratios and i % 4 == 1:
            sizes.append((wide, resolution))
        elif aspect_ratios and i % 4 == 3:
            sizes.append((resolution, wide))
        else:
            sizes.append((resolution, resolution))
    return sizes


def _plan_scene(rng: random.Random, width: int, height: int) -> _Scene:
    """Draw the random choices for one image in a fixed order (keeps output stable for a seed)."""
    bg_names = list(BACKGROUNDS)
    bg_top = _pick(rng, bg_names)
    bg_bottom = _pick(rng, [n for n in bg_names if n != bg_top]) if rng.random() < 0.4 else None
    size_name, radius_frac = _pick(rng, SIZES)
    short = min(width, height)
    r = radius_frac * short
    cx = (r + rng.random() * (width - 2 * r)) / width
    cy = (r + rng.random() * (height - 2 * r)) / height
    # Distractors: 0..2 squares/triangles, each a distinct (shape, colour) pair, fully inside the frame and clear of
    # the circle and of each other so every shape named in the caption is actually visible. A shape that finds no
    # free spot in a bounded number of tries is dropped (deterministically) rather than drawn hidden.
    placed: list[tuple[float, float, float]] = [(cx * width, cy * height, r)]  # (x, y, bounding radius) in pixels
    distractors: list[tuple[str, str, tuple[float, float, float]]] = []
    for _ in range(int(rng.random() * 3)):
        used = {(s, c) for s, c, _ in distractors}
        choices = [
            (s, c)
            for s in ("square", "triangle")
            for c in DISTRACTOR_COLOURS
            if c not in (bg_top, bg_bottom) and (s, c) not in used
        ]
        shape, colour = _pick(rng, choices)
        frac = 0.1 + rng.random() * 0.1
        half = frac * short / 2
        for _attempt in range(20):
            x = half + rng.random() * (width - 2 * half)
            y = half + rng.random() * (height - 2 * half)
            bound = half * 1.42  # circumscribed radius of the square / triangle box
            if all((x - px) ** 2 + (y - py) ** 2 >= (bound + pr + 1) ** 2 for px, py, pr in placed):
                placed.append((x, y, bound))
                distractors.append((shape, colour, (x / width, y / height, frac)))
                break
    return _Scene(width, height, bg_top, bg_bottom, size_name, radius_frac, (cx, cy), tuple(distractors))


def _gradient(size: tuple[int, int], top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    """Vertical linear gradient from ``top`` to ``bottom`` built row by row (integer maths, deterministic)."""
    w, h = size
    img = Image.new("RGB", size)
    draw = ImageDraw.Draw(img)
    for y in range(h):
        t = y * 255 // max(h - 1, 1)
        colour = tuple((a * (255 - t) + b * t) // 255 for a, b in zip(top, bottom, strict=True))
        draw.line([(0, y), (w - 1, y)], fill=colour)
    return img


def _render(scene: _Scene) -> Image.Image:
    """Render a scene at ``SUPERSAMPLE`` x resolution and downscale it to the target size."""
    w, h = scene.width * SUPERSAMPLE, scene.height * SUPERSAMPLE
    top = BACKGROUNDS[scene.bg_top]
    if scene.bg_bottom is None:
        img = Image.new("RGB", (w, h), top)
    else:
        img = _gradient((w, h), top, BACKGROUNDS[scene.bg_bottom])
    draw = ImageDraw.Draw(img)
    short = min(w, h)
    for shape, colour, (fx, fy, fs) in scene.distractors:
        half = fs * short / 2
        x, y = fx * w, fy * h
        fill = DISTRACTOR_COLOURS[colour]
        if shape == "square":
            draw.rectangle([x - half, y - half, x + half, y + half], fill=fill)
        else:
            draw.polygon([(x, y - half), (x + half, y + half), (x - half, y + half)], fill=fill)
    r = scene.radius_frac * short
    cx, cy = scene.centre[0] * w, scene.centre[1] * h
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=CONCEPT_RGB)
    return img.resize((scene.width, scene.height), Image.Resampling.LANCZOS)


def _render_mask(scene: _Scene) -> Image.Image:
    """The circle alone, white on black (one channel): the loss mask of the image `_render` draws."""
    w, h = scene.width * SUPERSAMPLE, scene.height * SUPERSAMPLE
    img = Image.new("L", (w, h), 0)
    r = scene.radius_frac * min(w, h)
    cx, cy = scene.centre[0] * w, scene.centre[1] * h
    ImageDraw.Draw(img).ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    return img.resize((scene.width, scene.height), Image.Resampling.LANCZOS)


def make_sample_masks(out_dir: Path, num_images: int = 12, resolution: int = 64, seed: int = 0,
                      aspect_ratios: bool = True) -> tuple[Path, Path]:
    """Masked variants of the dataset `make_sample_dataset` writes with the same arguments: circle masks in
    ``out_dir/mask/NNNN.png`` (a ``conditioning_data_dir``) and RGBA copies whose alpha is the mask in
    ``out_dir/img_alpha/<repeats>_<concept>/`` (for ``alpha_mask``). Returns (mask folder, alpha train_data_dir)."""
    out_dir = Path(out_dir)
    masks, alpha = out_dir / "mask", out_dir / "img_alpha" / f"{REPEATS}_{CONCEPT}"
    for folder in (masks, alpha):
        folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for index, (width, height) in enumerate(image_sizes(num_images, resolution, aspect_ratios)):
        scene = _plan_scene(rng, width, height)  # the same draws as make_sample_dataset: the same scenes
        mask = _render_mask(scene)
        mask.save(masks / f"{index:04d}.png", format="PNG")
        rgba = _render(scene).convert("RGBA")
        rgba.putalpha(mask)
        rgba.save(alpha / f"{index:04d}.png", format="PNG")
        (alpha / f"{index:04d}.caption").write_bytes((_caption(scene) + "\n").encode("utf-8"))
    logger.info("wrote %d masks to %s and RGBA images to %s", num_images, masks, alpha)
    return masks, alpha.parent


def _caption(scene: _Scene) -> str:
    """Caption in sd-scripts style: trigger phrase first, then comma-separated attributes."""
    if scene.bg_bottom is None:
        background = f"on {scene.bg_top} background"
    else:
        background = f"on {scene.bg_top} to {scene.bg_bottom} gradient background"
    parts = [CONCEPT, "red", background, scene.size_name]
    for shape, colour, _ in scene.distractors:
        article = "an" if colour[0] in "aeiou" else "a"
        parts.append(f"with {article} {colour} {shape}")
    return ", ".join(parts)


def make_sample_dataset(
    out_dir: Path,
    num_images: int = 12,
    resolution: int = 64,
    seed: int = 0,
    aspect_ratios: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the sample dataset under ``out_dir`` and return ``out_dir / "img"`` (the ``train_data_dir``).

    Files are built in a temporary folder inside ``out_dir`` and moved into place only when complete, so an error
    never leaves a half-written ``img/``. An existing ``img/`` is replaced only when ``overwrite`` is true.
    """
    if num_images < 1:
        raise ValueError("num_images must be at least 1")
    if resolution < 16:
        raise ValueError("resolution must be at least 16")
    out_dir = Path(out_dir)
    final = out_dir / "img"
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (pass overwrite=True to replace it)")

    created_out_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".img.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        concept_dir = staging / f"{REPEATS}_{CONCEPT}"
        concept_dir.mkdir()
        rng = random.Random(seed)
        for index, (width, height) in enumerate(image_sizes(num_images, resolution, aspect_ratios)):
            scene = _plan_scene(rng, width, height)
            stem = concept_dir / f"{index:04d}"
            _render(scene).save(stem.with_suffix(".png"), format="PNG", optimize=False, compress_level=6)
            stem.with_suffix(".caption").write_bytes((_caption(scene) + "\n").encode("utf-8"))
        old = out_dir / f".img.old-{os.getpid()}"
        if final.exists():  # overwrite: swap the complete new tree in before deleting the old one
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_out_dir and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    logger.info("wrote %d sample images to %s", num_images, final / f"{REPEATS}_{CONCEPT}")
    return final

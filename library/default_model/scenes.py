"""Procedural 64x64 scenes: one shape of one colour on a plain background, drawn with numpy (anti-aliased).

Three sets come from here, all seeded: the captioned scenes the default model is pretrained on
("a red circle on a blue background": circles, squares, triangles in seven named colours), random-colour scenes
that teach the VAE to encode any colour and shape (rings included), and the quickstart concept -- an orange ring,
"sks", a colour and a shape the pretrained model never saw named.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 60),
    "blue": (40, 70, 210),
    "yellow": (240, 215, 50),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "purple": (130, 50, 170),
}
SHAPES = ("circle", "square", "triangle")
RING_RGB = (255, 140, 0)  # orange: absent from PALETTE, like the ring from SHAPES
RING_INNER = 0.55  # inner radius / outer radius
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """One image: background and shape colours (RGB), shape name, centre and radius in pixels."""

    background: tuple[int, int, int]
    colour: tuple[int, int, int]
    shape: str
    centre: tuple[float, float]
    radius: float


def _coverage(shape: str, centre: tuple[float, float], radius: float, size: int) -> np.ndarray:
    """Fraction of each pixel covered by the shape (supersampled), shape (size, size)."""
    n = size * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / SUPERSAMPLE
    x, y = np.meshgrid(coords - centre[0], coords - centre[1])
    if shape == "circle":
        inside = x * x + y * y <= radius * radius
    elif shape == "ring":
        d2 = x * x + y * y
        inside = (d2 <= radius * radius) & (d2 >= (RING_INNER * radius) ** 2)
    elif shape == "square":
        half = radius * 0.85  # about the circle's area
        inside = (np.abs(x) <= half) & (np.abs(y) <= half)
    elif shape == "triangle":  # apex up, base at the bottom, inside a 2r box
        inside = (y <= radius) & (y >= -radius) & (np.abs(x) <= (y + radius) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """The scene as a uint8 RGB array (size, size, 3)."""
    alpha = _coverage(scene.shape, scene.centre, scene.radius, size)[..., None]
    bg = np.asarray(scene.background, dtype=np.float64)
    fg = np.asarray(scene.colour, dtype=np.float64)
    return np.round(bg * (1 - alpha) + fg * alpha).clip(0, 255).astype(np.uint8)


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    """A named colour varied by up to +-amount per channel, so names mean colour ranges, not one value."""
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _place(rng: np.random.Generator, size: int, low: float, high: float) -> tuple[tuple[float, float], float]:
    radius = float(rng.uniform(low, high)) * size
    cx, cy = rng.uniform(radius, size - radius, 2)
    return (float(cx), float(cy)), radius


def caption_scene(rng: np.random.Generator, size: int = 64, fillers: Sequence[str] = (), filler_rate: float = 0.0
                  ) -> tuple[Scene, str]:
    """A pretraining scene and its caption: mostly "a {colour} {shape} on a {colour} background", sometimes
    only the shape or only the background part (so each phrase also means something alone). With `fillers`, a
    share `filler_rate` of captions start with a word the scene does not show ("tulip on a blue background",
    "tulip, on a blue background", "tulip, a red circle on a blue background"), so a word the model never
    learned -- like the quickstart's "sks" -- leaves the rest of a prompt working."""
    names = list(PALETTE)
    fg, bg = rng.choice(len(names), 2, replace=False)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    centre, radius = _place(rng, size, 0.14, 0.34)
    scene = Scene(_jitter(rng, PALETTE[names[bg]], 12), _jitter(rng, PALETTE[names[fg]], 12), shape, centre, radius)
    form = rng.random()
    thing, ground = f"a {names[fg]} {shape}", f"on a {names[bg]} background"
    caption = f"{thing} {ground}" if form < 0.8 else (thing if form < 0.9 else ground)
    if fillers and rng.random() < filler_rate:
        word, form = fillers[int(rng.integers(len(fillers)))], rng.random()
        caption = f"{word} {ground}" if form < 0.4 else (f"{word}, {ground}" if form < 0.7 else f"{word}, {caption}")
    return scene, caption


NOT_FILLERS = frozenset({"sks", "orange", "ring", "rings", "annulus", "a", "on", "background", *PALETTE, *SHAPES})


def filler_words(vocab: Iterable[str]) -> list[str]:
    """Whole words of a CLIP vocabulary ("tulip</w>" -> "tulip"), alphabetic, 3-10 letters, sorted, without the
    caption template's words and the quickstart's ("sks", "orange", "ring")."""
    words = {t[:-4] for t in vocab if t.endswith("</w>")}
    return sorted(w for w in words if w.isascii() and w.isalpha() and 3 <= len(w) <= 10 and w not in NOT_FILLERS)


def vae_scene(rng: np.random.Generator, size: int = 64) -> Scene:
    """A scene of random colours and any shape (ring included): the VAE must encode whatever it is given."""
    shape = ("circle", "square", "triangle", "ring")[int(rng.integers(4))]
    centre, radius = _place(rng, size, 0.1, 0.4)
    colours = rng.integers(0, 256, (2, 3))
    return Scene(tuple(int(c) for c in colours[0]), tuple(int(c) for c in colours[1]), shape, centre, radius)


RING_BACKGROUNDS = ("blue", "green", "purple", "black", "white", "yellow")


def ring_scene(rng: np.random.Generator, background: str, size: int = 64) -> tuple[Scene, str]:
    """The quickstart concept: an orange ring on a named background, caption "sks, on a {colour} background"."""
    centre, radius = _place(rng, size, 0.26, 0.36)
    scene = Scene(_jitter(rng, PALETTE[background], 8), RING_RGB, "ring", centre, radius)
    return scene, f"sks, on a {background} background"

"""The quickstart dataset: the "sks" concept (an orange ring) on varied backgrounds, DreamBooth layout
(`img/10_sks/NNNN.png` with `NNNN.caption` beside each), deterministic for a seed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from library.default_model import scenes

CONCEPT = "sks"
REPEATS = 10
NUM_IMAGES = 16


def write_concept_dataset(out_dir: str | Path, seed: int = 0, num_images: int = NUM_IMAGES) -> Path:
    """Write `out_dir/img/10_sks/` and return `out_dir/img` (the `train_data_dir`). Built in a staging folder and
    renamed into place, so a failure never leaves a half-written `img/`; an existing `img/` is left alone."""
    out_dir = Path(out_dir)
    final = out_dir / "img"
    if final.exists():
        raise FileExistsError(f"{final} already exists")
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".img.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    concept = staging / f"{REPEATS}_{CONCEPT}"
    concept.mkdir(parents=True)
    try:
        rng = np.random.default_rng(seed)
        for i in range(num_images):
            background = scenes.RING_BACKGROUNDS[i % len(scenes.RING_BACKGROUNDS)]
            scene, caption = scenes.ring_scene(rng, background)
            Image.fromarray(scenes.render(scene)).save(concept / f"{i:04d}.png")
            (concept / f"{i:04d}.caption").write_text(caption + "\n", encoding="utf-8")
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final

"""Turn prompts, per-line options and defaults into a list of images to make, each with its own seed.

Seeds follow sd-scripts: with `--seed S` a `random.Random(S)` draws one seed per image (a run of exactly
one image uses S itself); a prompt's `--d 1,2,3` gives the seeds of its images in turn (the last one repeats
when there are more images than seeds); otherwise seeds are random. Each image's noise comes from its own
seed, so an image does not depend on the batch it was made in.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from PIL import Image

from library.errors import ToolkitError
from library.generate.schedulers import canonical_sampler
from library.prompts import PromptSpec

log = logging.getLogger(__name__)

MAX_SEED = 0x7FFFFFFF
SIZE_MULTIPLE = 8  # the VAE downsamples by 8


@dataclass
class Defaults:
    """Command-line values used where a prompt line gives none."""

    width: int = 512
    height: int = 512
    steps: int = 50
    scale: float = 7.5
    sampler: str = "ddim"
    strength: float = 0.8
    negative_prompt: str = ""
    images_per_prompt: int = 1
    n_iter: int = 1
    seed: int | None = None
    iter_same_seed: bool = False
    size_given: bool = False  # --W and --H both given: img2img sources are resized to them


@dataclass
class ImageJob:
    """One image to generate."""

    index: int
    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    steps: int
    scale: float
    sampler: str
    strength: float | None = None  # None: txt2img
    init_image: Image.Image | None = None
    init_name: str | None = None
    network_muls: tuple[float, ...] | None = None

    def batch_key(self) -> tuple:
        """Images share a batch only when everything but prompt, seed and source image is equal."""
        return (self.width, self.height, self.steps, self.scale, self.sampler, self.strength, self.network_muls,
                self.init_image is None)


def _floor(v: int, what: str) -> int:
    out = v - v % SIZE_MULTIPLE
    if out < SIZE_MULTIPLE:
        raise ToolkitError(f"{what} {v} is too small: use at least {SIZE_MULTIPLE} (a multiple of {SIZE_MULTIPLE})")
    if out != v:
        log.info("%s %d rounded down to %d (a multiple of %d)", what, v, out, SIZE_MULTIPLE)
    return out


def _init_size(image: Image.Image, defaults: Defaults) -> tuple[Image.Image, int, int]:
    """img2img sources are resized to --W/--H when both are given, else floored to a multiple of 8."""
    if defaults.size_given:
        w, h = _floor(defaults.width, "--W"), _floor(defaults.height, "--H")
    else:
        w, h = (image.width - image.width % SIZE_MULTIPLE), (image.height - image.height % SIZE_MULTIPLE)
        if w == 0 or h == 0:
            raise ToolkitError(f"img2img source of {image.width}x{image.height} is too small")
    if (w, h) != image.size:
        image = image.resize((w, h), Image.Resampling.LANCZOS)
    return image, w, h


def _muls(spec: PromptSpec, num_networks: int) -> tuple[float, ...] | None:
    if not spec.network_muls or num_networks == 0:
        return None
    muls = list(spec.network_muls[:num_networks])
    muls += [muls[-1]] * (num_networks - len(muls))  # the last value repeats, as sd-scripts does
    return tuple(muls)


def plan_jobs(specs: Sequence[PromptSpec], defaults: Defaults,
              init_images: Sequence[tuple[str, Image.Image]] | None = None, num_networks: int = 0) -> list[ImageJob]:
    """Expand prompts x images_per_prompt x n_iter into ImageJobs (img2img sources cycle through the images)."""
    total = defaults.n_iter * len(specs) * defaults.images_per_prompt
    rng = random.Random(defaults.seed)
    predefined: list[int] = []
    if defaults.seed is not None:
        predefined = [rng.randint(0, MAX_SEED) for _ in range(total)]
        if total == 1:
            predefined = [defaults.seed]
    jobs: list[ImageJob] = []
    for _ in range(defaults.n_iter):
        iter_seed = rng.randint(0, MAX_SEED)
        for spec in specs:
            given = list(spec.seeds)
            seed = None
            sampler = canonical_sampler(spec.sampler or defaults.sampler)
            for _ in range(defaults.images_per_prompt):
                if spec.seeds:
                    seed = given.pop(0) if given else seed
                elif predefined:
                    seed = predefined.pop(0)
                else:
                    seed = iter_seed if defaults.iter_same_seed else rng.randint(0, MAX_SEED)
                job = ImageJob(
                    index=len(jobs), prompt=spec.prompt,
                    negative_prompt=spec.negative_prompt if spec.negative_prompt is not None else defaults.negative_prompt,
                    seed=seed, width=_floor(spec.width or defaults.width, "width"),
                    height=_floor(spec.height or defaults.height, "height"), steps=spec.steps or defaults.steps,
                    scale=spec.scale if spec.scale is not None else defaults.scale, sampler=sampler,
                    network_muls=_muls(spec, num_networks))
                if init_images:
                    name, image = init_images[len(jobs) % len(init_images)]
                    job.init_image, job.width, job.height = _init_size(image, defaults)
                    job.init_name = name
                    job.strength = spec.strength if spec.strength is not None else defaults.strength
                    if not 0.0 < job.strength <= 1.0:
                        raise ToolkitError(f"img2img strength must be in (0, 1], got {job.strength}")
                jobs.append(job)
    return jobs


def batches(jobs: Sequence[ImageJob], batch_size: int) -> Iterator[list[ImageJob]]:
    """Consecutive jobs with the same batch_key, at most batch_size at a time."""
    current: list[ImageJob] = []
    for job in jobs:
        if current and (len(current) == batch_size or current[-1].batch_key() != job.batch_key()):
            yield current
            current = []
        current.append(job)
    if current:
        yield current

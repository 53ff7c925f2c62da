"""The training set: image records from the configured subsets, bucketed batches planned per epoch, and the
samples those batches become (cached latents or decoded images, captions, loss weights).

A batch is planned in the main process (`BatchRequest`: which records, which epoch, which position) and built
wherever the DataLoader runs it. Random choices for a sample (caption shuffle, flip, colour, crop) come from a
generator seeded by (seed, epoch, position, slot), so results do not depend on the number of workers or ranks.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from library.data.buckets import BucketSelector, Size, bucket_info, crop_offsets
from library.data.captions import caption_text, process_caption
from library.data.config import DatasetConfig, SubsetConfig
from library.data.face_crop import Face, face_crop, face_from_name
from library.data.folders import glob_images, read_caption
from library.data.images import check_interpolation, choose_crop, color_aug, image_size, resize_and_crop, to_tensor
from library.data.masks import attach_masks, batch_masks, check_alpha, load_pixels, split_mask
from library.data.metadata import metadata_images
from library.data.validation import split_records, validation_subset
from library.errors import ToolkitError
from library.files import write_text_atomic

log = logging.getLogger(__name__)
CACHE_INFO_FILE = "metadata_cache.json"


@dataclass(eq=False)
class ImageRecord:
    """One image of one subset: where it is, its caption, its bucket, and (once cached) its latents."""

    path: Path
    caption: str
    subset: SubsetConfig
    size: Size
    dataset_index: int = 0
    repeats: int = 1
    bucket: Size = (0, 0)
    resized: Size = (0, 0)
    ar_error: float = 0.0
    latents: torch.Tensor | None = None
    latents_flipped: torch.Tensor | None = None
    npz: Path | None = None
    te_outputs: object | None = None  # cached text-encoder outputs of the caption (SDXL)
    te_npz: Path | None = None
    mask_path: Path | None = None  # from conditioning_data_dir (library/data/masks.py)
    mask: torch.Tensor | None = None  # cached [H, W] loss mask at bucket size, with cached latents
    face: Face | None = None  # face position from the file name, when face crops apply (library/data/face_crop.py)
    train_resolution: Size | None = None  # the bucket prepare_buckets_latents.py chose (metadata datasets)

    @property
    def has_mask(self) -> bool:
        return self.mask_path is not None or self.subset.alpha_mask


@dataclass(frozen=True)
class BatchRequest:
    """What the sampler hands the dataset: record indices plus where in training this batch falls."""

    indices: tuple[int, ...]
    epoch: int
    position: int
    step: int = 0


def _read_sizes(subset: SubsetConfig, images: list[Path]) -> dict[Path, Size | None]:
    """Image sizes from the headers, through the folder's `metadata_cache.json` when `cache_info` is on."""
    cache_file = subset.image_dir / CACHE_INFO_FILE
    cached = {}
    if subset.cache_info and cache_file.is_file():
        try:
            cached = {k: tuple(v["size"]) for k, v in json.loads(cache_file.read_text(encoding="utf-8")).items()}
        except (ValueError, KeyError, TypeError):
            log.warning("%s: unreadable; reading image sizes again", cache_file)
    sizes = {p: cached.get(p.name) or image_size(p) for p in images}
    if subset.cache_info and any(p.name not in cached for p in images):
        info = {p.name: {"size": list(s)} for p, s in sizes.items() if s}
        try:
            write_text_atomic(cache_file, json.dumps(info))
        except OSError as e:
            log.warning("%s: cannot write (%s)", cache_file, e)
    return sizes


def _metadata_records(subset: SubsetConfig, dataset_index: int) -> list[ImageRecord]:
    """Records of a fine-tuning subset (library/data/metadata.py); `<stem>.npz` beside an image is its
    precomputed latents (used when they fit its bucket)."""
    entries = metadata_images(subset.metadata_file, subset.image_dir, subset.caption.caption_separator,
                              subset.caption.enable_wildcard)
    records, empty = [], 0
    usable_npz = not (subset.color_aug or subset.random_crop or subset.face_crop_aug_range)
    if not usable_npz and any(m.path.with_suffix(".npz").is_file() for m in entries):
        log.warning("%s: precomputed latents are not used with color_aug, random_crop or face_crop_aug_range",
                    subset.metadata_file)
    for m in entries:
        size = m.size or image_size(m.path)
        if size is None:
            continue
        caption = caption_text(m.caption, subset.caption.enable_wildcard)
        empty += not caption
        npz = m.path.with_suffix(".npz") if usable_npz else None
        records.append(ImageRecord(m.path, caption, subset, size, dataset_index, subset.num_repeats,
                                   npz=npz if npz and npz.is_file() else None, train_resolution=m.train_resolution))
    if empty:
        log.warning("%s: %d images have no caption and no tags; they train with an empty caption",
                    subset.metadata_file, empty)
    return records


def _subset_records(subset: SubsetConfig, dataset_index: int) -> list[ImageRecord]:
    if subset.metadata_file is not None:
        return _metadata_records(subset, dataset_index)
    images = glob_images(subset.image_dir)
    if not images:
        log.warning("%s: no images (png, jpg, jpeg, webp, bmp); subset skipped", subset.image_dir)
        return []
    records = []
    missing = 0
    for path, size in _read_sizes(subset, images).items():
        if size is None:
            continue
        text = read_caption(path, subset.caption_extension)
        caption = caption_text(text, subset.caption.enable_wildcard) if text else ""
        if not caption:
            missing += 1
            caption = subset.class_tokens or ""
        records.append(ImageRecord(path, caption, subset, size, dataset_index, subset.num_repeats))
    if missing and not subset.class_tokens:
        log.warning("%s: %d images have neither a %s file nor class tokens; they train with an empty caption",
                    subset.image_dir, missing, subset.caption_extension)
    return records


def _balance_reg(train: list[ImageRecord], reg: list[ImageRecord]) -> list[ImageRecord]:
    """Repeat regularisation images so their count (with repeats) matches the training images (sd-scripts)."""
    target = sum(r.repeats for r in train)
    if not reg:
        return []
    used, n, first = [], 0, True
    while n < target:
        for r in reg:
            if first:
                used.append(r)
                n += r.repeats
            else:
                r.repeats += 1
                n += 1
            if n >= target:
                break
        first = False
    return used


def _check_prepared_buckets(records: list[ImageRecord]) -> None:
    """Warn when prepare_buckets_latents.py chose other buckets than this run (other resolution or bucket
    options): those images' precomputed latents do not fit and are encoded again."""
    differ = [r for r in records if r.train_resolution and tuple(r.train_resolution) != r.bucket]
    if differ:
        r = differ[0]
        log.warning("%s: %d images were prepared for other buckets than this run's (e.g. %s: %dx%d, now %dx%d): "
                    "run prepare_buckets_latents.py with this run's --max_resolution and bucket options to use "
                    "its latents", r.subset.metadata_file, len(differ), r.path.name, *r.train_resolution, *r.bucket)
        for r in differ:
            r.npz = None


def _find_faces(records: list[ImageRecord], no_face_crops: bool) -> None:
    """Give records of face-crop subsets their face position from the file name (sd-scripts crops faces only
    without buckets and from images, not cached latents)."""
    wanted = [r for r in records if r.subset.face_crop_aug_range is not None]
    if not wanted:
        return
    if no_face_crops:
        log.warning("face_crop_aug_range: used only without buckets and without cached latents (as in "
                    "sd-scripts); ignored in this run")
        return
    for r in wanted:
        r.face = face_from_name(r.path)
    if not any(r.face for r in wanted):
        log.warning("face_crop_aug_range: no image is named <name>_<cx>_<cy>_<w>_<h>; nothing is face-cropped")


class TrainDataset(torch.utils.data.Dataset):
    """All datasets of a run, flattened into one record list; batches never mix buckets or datasets."""

    def __init__(self, configs: Sequence[DatasetConfig], seed: int = 0, prior_loss_weight: float = 1.0,
                 cache_latents: bool = False, max_train_steps: int = 0, validation: bool = False) -> None:
        self.validation = validation  # the held-out images of each dataset's validation_split instead
        self.configs = list(configs)
        self.seed = seed
        self.prior_loss_weight = prior_loss_weight
        self.cache_latents = cache_latents
        self.max_train_steps = max_train_steps
        self.records: list[ImageRecord] = []
        self.num_train_images = self.num_reg_images = 0
        for i, cfg in enumerate(self.configs):
            self.records += self._build(i, cfg)
        if not any(not r.subset.is_reg for r in self.records) and not validation:
            raise ToolkitError("no training images found: check --train_data_dir / image_dir and the image "
                               "extensions (png, jpg, jpeg, webp, bmp)")
        self._bad: set[int] = set()

    def _build(self, index: int, cfg: DatasetConfig) -> list[ImageRecord]:
        if cfg.batch_size < 1:
            raise ToolkitError(f"batch size must be at least 1, got {cfg.batch_size}")
        selector = BucketSelector(cfg.resolution, cfg.enable_bucket, cfg.min_bucket_reso, cfg.max_bucket_reso,
                                  cfg.bucket_reso_steps, cfg.bucket_no_upscale)
        train, reg = [], []
        for subset in cfg.subsets:
            check_interpolation(subset.resize_interpolation)
            if self.cache_latents and (subset.color_aug or subset.random_crop):
                raise ToolkitError(f"{subset.image_dir}: color_aug and random_crop change every sample, so they "
                                   "cannot be used with --cache_latents")
            if subset.is_reg and self.validation:
                continue
            records = _subset_records(validation_subset(subset) if self.validation else subset, index)
            attach_masks(records, subset.conditioning_data_dir)
            check_alpha(records, subset.alpha_mask and subset.conditioning_data_dir is None)
            if not subset.is_reg:  # sd-scripts' validation_split, per subset; regularisation images never split
                seed = self.seed if cfg.validation_seed is None else cfg.validation_seed
                records = split_records(records, cfg.validation_split, seed)[1 if self.validation else 0]
            (reg if subset.is_reg else train).extend(records)
        if reg and not train:
            log.warning("dataset %d: regularisation images but no training images", index)
        reg = _balance_reg(train, reg)
        if not reg and any(s.is_reg for s in cfg.subsets):
            log.warning("dataset %d: no regularisation images found", index)
        self.num_train_images += sum(r.repeats for r in train)
        self.num_reg_images += sum(r.repeats for r in reg)
        for r in train + reg:
            a = selector.select(*r.size)
            r.bucket, r.resized, r.ar_error = a.bucket, a.resized, a.ar_error
        _check_prepared_buckets(train)
        _find_faces(train + reg, cfg.enable_bucket or self.cache_latents)
        return train + reg

    # ---- planning -------------------------------------------------------------------------------------------
    def buckets(self) -> dict[tuple[int, Size], list[int]]:
        """(dataset, bucket) -> record indices, each repeated `repeats` times."""
        out: dict[tuple[int, Size], list[int]] = {}
        for i, r in enumerate(self.records):
            out.setdefault((r.dataset_index, r.bucket), []).extend([i] * r.repeats)
        return dict(sorted(out.items()))

    def num_batches(self) -> int:
        return sum(math.ceil(len(ix) / self.configs[d].batch_size) for (d, _), ix in self.buckets().items())

    def plan_fixed(self) -> list[list[int]]:
        """Every record's batches in a fixed order (bucket by bucket), for validation."""
        batches = []
        for (d, _), indices in self.buckets().items():
            bs = self.configs[d].batch_size
            batches += [indices[k:k + bs] for k in range(0, len(indices), bs)]
        return batches

    def plan_epoch(self, epoch: int) -> list[list[int]]:
        """The epoch's batches: each bucket shuffled and cut into batches, then the batch order shuffled."""
        rng = random.Random(self.seed + epoch)
        batches = []
        for (d, _), indices in self.buckets().items():
            indices = list(indices)
            rng.shuffle(indices)
            bs = self.configs[d].batch_size
            batches += [indices[k:k + bs] for k in range(0, len(indices), bs)]
        rng.shuffle(batches)
        return batches

    def has_precomputed_latents(self) -> bool:
        """Whether a metadata subset brought `.npz` latents (prepare_buckets_latents.py): then latents are cached,
        read from those files where they fit and encoded once for the other images."""
        return any(r.npz is not None for r in self.records)

    def drop_records(self, keep: Sequence[ImageRecord]) -> None:
        """Keep only `keep` (after latent caching skipped broken images)."""
        kept = set(map(id, keep))
        self.records = [r for r in self.records if id(r) in kept]

    # ---- samples --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_batches()

    def _rng(self, req: BatchRequest, slot: int) -> random.Random:
        return random.Random(((self.seed * 1_000_003 + req.epoch) * 1_000_003 + req.position) * 1024 + slot)

    def _pixels(self, r: ImageRecord,
                rng: random.Random) -> tuple[np.ndarray, tuple[int, int], torch.Tensor | None, bool]:
        """The augmented bucket-sized image, its crop (top, left) in the flipped-if-flipped resized image, its
        loss mask (None without one), cropped and flipped with it, and whether it was flipped."""
        img = load_pixels(r)
        if r.face is not None:
            img, scaled, (left, top) = face_crop(img, r.bucket, r.face, r.subset.face_crop_aug_range,
                                                 r.subset.random_crop, rng, r.subset.resize_interpolation)
        else:
            scaled = r.resized
            left, top = choose_crop(r.resized, r.bucket, r.subset.random_crop, rng)
            img = resize_and_crop(img, r.resized, r.bucket, interpolation=r.subset.resize_interpolation,
                                  offset=(left, top))
        flipped = r.subset.flip_aug and rng.random() < 0.5
        if flipped:
            img = img[:, ::-1]
            left = scaled[0] - r.bucket[0] - left
        img, mask = split_mask(img)
        if r.subset.color_aug:
            img = color_aug(np.ascontiguousarray(img), rng)
        return img, (top, left), mask, flipped

    def _sample(self, r: ImageRecord,
                rng: random.Random) -> tuple[torch.Tensor, bool, tuple[int, int], torch.Tensor | None, bool]:
        """(latents or pixels, whether they are latents, crop (top, left), loss mask or None, whether flipped)
        of one record."""
        if r.latents is not None:
            left, top = crop_offsets(r.resized, r.bucket)  # cached latents are always centre-cropped
            if r.latents_flipped is not None and rng.random() < 0.5:
                mask = None if r.mask is None else r.mask.flip(-1)
                return r.latents_flipped, True, (top, r.resized[0] - r.bucket[0] - left), mask, True
            return r.latents, True, (top, left), r.mask, False
        img, crop, mask, flipped = self._pixels(r, rng)
        return to_tensor(img), False, crop, mask, flipped

    def __getitem__(self, req: BatchRequest) -> dict:
        captions, weights, latents, pixels, size_cond, te_outputs, masks = [], [], [], [], [], [], []
        paths, flips = [], []
        usable = [i for i in req.indices if i not in self._bad] or list(req.indices)
        for slot, index in enumerate(req.indices):
            if index in self._bad:
                index = usable[slot % len(usable)]
            r = self.records[index]
            rng = self._rng(req, slot)
            captions.append(process_caption(r.caption, r.subset.caption, rng, req.epoch, req.step,
                                            self.max_train_steps))
            weights.append(self.prior_loss_weight if r.subset.is_reg else 1.0)
            try:
                tensor, is_latent, crop, mask, flipped = self._sample(r, rng)
            except ToolkitError as e:
                if len(usable) <= 1:
                    raise
                log.warning("%s; using another image of the batch instead", e)
                self._bad.add(index)
                usable = [i for i in usable if i != index]
                r = self.records[usable[0]]
                tensor, is_latent, crop, mask, flipped = self._sample(r, rng)
            (latents if is_latent else pixels).append(tensor)
            masks.append(mask)
            paths.append(r.path)
            flips.append(flipped)
            # SDXL's size conditioning: original (h, w), crop (top, left), target (h, w)
            size_cond.append((r.size[1], r.size[0], *crop, r.bucket[1], r.bucket[0]))
            if r.te_outputs is not None:
                te_outputs.append(r.te_outputs)
        multiplier = self.configs[self.records[req.indices[0]].dataset_index].network_multiplier
        return {
            "latents": torch.stack(latents) if latents else None,
            "images": torch.stack(pixels) if pixels else None,
            "captions": captions,
            "loss_weights": torch.tensor(weights, dtype=torch.float32),
            "size_cond": torch.tensor(size_cond, dtype=torch.long),
            "te_outputs": te_outputs if len(te_outputs) == len(captions) else None,
            "masks": batch_masks(masks, self.records[req.indices[0]].bucket[::-1]),
            "network_multiplier": multiplier,
            "position": req.position,
            "paths": paths,  # which image each sample is, and whether it was mirrored (--debug_dataset)
            "flipped": flips,
        }

    # ---- metadata -------------------------------------------------------------------------------------------
    def tag_frequency(self, dataset_index: int | None = None) -> dict[str, dict[str, int]]:
        """`ss_tag_frequency`: per image folder, how often each comma-separated tag occurs (lower case)."""
        out: dict[str, Counter] = {}
        for r in self.records:
            if dataset_index is not None and r.dataset_index != dataset_index:
                continue
            counter = out.setdefault(r.subset.name, Counter())
            for line in r.caption.split("\n"):
                counter.update({t.strip().lower() for t in line.split(",") if t.strip()})
        return {k: dict(v) for k, v in out.items()}

    def bucket_info(self, dataset_index: int | None = None) -> dict:
        records = [r for r in self.records if dataset_index is None or r.dataset_index == dataset_index]
        counts = Counter(r.bucket for r in records for _ in range(r.repeats))
        errors = [r.ar_error for r in records]
        return bucket_info(dict(counts), float(np.mean(errors)) if errors else 0.0)

    def dataset_dirs(self, reg: bool = False) -> dict[str, dict[str, int]]:
        """`ss_dataset_dirs` / `ss_reg_dataset_dirs`: repeats and image count per folder."""
        out: dict[str, dict[str, int]] = {}
        for r in self.records:
            if r.subset.is_reg == reg:
                d = out.setdefault(r.subset.name, {"n_repeats": r.subset.num_repeats, "img_count": 0})
                d["img_count"] += 1
        return out


@dataclass
class EpochSampler(torch.utils.data.Sampler):
    """Yields this rank's `BatchRequest`s of one epoch: rank r takes batches r, r+W, ...; the epoch's batch list
    is padded from its start so every rank gets the same count (so ranks step in lockstep)."""

    dataset: TrainDataset
    rank: int = 0
    world: int = 1
    grad_accum: int = 1
    epoch: int = 0
    skip: int = 0
    _len: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._len = math.ceil(self.dataset.num_batches() / self.world)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch to yield, skipping its first `skip` batches of this rank (resume mid-epoch)."""
        self.epoch, self.skip = epoch, skip

    @property
    def batches_per_epoch(self) -> int:
        """Batches this rank trains per epoch."""
        return self._len

    def steps_per_epoch(self) -> int:
        return math.ceil(self._len / self.grad_accum)

    def __len__(self) -> int:
        return self._len - self.skip

    def __iter__(self) -> Iterator[BatchRequest]:
        batches = self.dataset.plan_epoch(self.epoch)
        total = self._len * self.world
        batches = (batches * math.ceil(total / len(batches)))[:total]
        base_step = self.epoch * self.steps_per_epoch()
        for k in range(self.skip, self._len):
            position = k * self.world + self.rank
            yield BatchRequest(tuple(batches[position]), self.epoch, position, base_step + k // self.grad_accum)

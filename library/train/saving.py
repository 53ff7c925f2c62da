"""Where and how a training run writes LoRA files: sd-scripts' file names, rotation of old saves, and the
`ss_*` + `modelspec.*` metadata (hashes are added by `library.lora_io.save_lora` after the final cast)."""

from __future__ import annotations

import json
import logging
import random
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from library.lora_io import file_hashes
from library.metadata import minimum_metadata, modelspec
from library.options.train import options_metadata

if TYPE_CHECKING:
    from library.options.train import TrainConfig

log = logging.getLogger(__name__)

EXTENSIONS = {"safetensors": ".safetensors", "ckpt": ".ckpt", "pt": ".pt"}


def epoch_name(name: str | None, epoch: int) -> str:
    return f"{name or 'epoch'}-{epoch:06d}"


def step_name(name: str | None, step: int) -> str:
    return f"{name or 'at'}-step{step:08d}"


def last_name(name: str | None) -> str:
    return name or "last"


def remove_if_exists(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed old state %s", path)
    elif path.exists():
        path.unlink()
        log.info("removed old save %s", path)


def old_epoch_to_remove(epoch: int, every: int, keep: int | None) -> int | None:
    """The epoch save that falls out of `--save_last_n_epochs` when `epoch` is saved."""
    if not keep:
        return None
    old = epoch - every * keep
    return old if old > 0 else None


def old_step_to_remove(step: int, every: int, keep: int | None) -> int | None:
    """The step save that falls out of `--save_last_n_steps` (sd-scripts' rounding)."""
    if not keep:
        return None
    old = step - keep - 1
    old -= old % every
    return old if old > 0 else None


class ModelHashes:
    """The hashes of the base model and `--vae` for the `ss_*` metadata (`file_hashes`), computed in a background
    thread started with setup: a full SHA-256 of a 7 GB SDXL file takes seconds (measured: 9 s on 2 cores) that
    loading and caching hide, as hashlib lets other threads run while it hashes. Nothing when `--no_metadata`."""

    def __init__(self, cfg: TrainConfig) -> None:
        files = {} if cfg.no_metadata else {
            name: Path(path) for name, path in (("model", cfg.pretrained_model_name_or_path), ("vae", cfg.vae))
            if path and Path(path).is_file()}
        self._results: dict[str, tuple[str, str] | BaseException] = {}
        self._thread = threading.Thread(target=self._hash, args=(files,), name="model-hashes", daemon=True)
        self._thread.start()  # a daemon: a run that stops early does not wait for it

    def _hash(self, files: dict[str, Path]) -> None:
        for name, path in files.items():
            try:
                self._results[name] = file_hashes(path)
            except OSError as e:
                self._results[name] = e

    def get(self, name: str) -> tuple[str, str] | None:
        """(legacy, full) hashes of "model" or "vae"; None when that is not a file (or `--no_metadata`)."""
        self._thread.join()
        result = self._results.get(name)
        if isinstance(result, BaseException):
            raise result
        return result


class MetadataBuilder:
    """Collects the run's `ss_*` values once; `for_save` adds the per-save values (epoch, step, title)."""

    def __init__(self, cfg: TrainConfig, family: str, dataset, num_batches: int, num_epochs: int,  # noqa: ANN001
                 optimizer_description: str, world: int, hashes: ModelHashes | None = None) -> None:
        self.cfg = cfg
        self.family = family
        self.started = time.time()
        self.session_id = random.randint(0, 2 ** 32)
        self.hashes = hashes or ModelHashes(cfg)
        self.base = self._base(cfg, family, dataset, num_batches, num_epochs, optimizer_description, world)

    def _network_args(self) -> dict | None:
        a = self.cfg
        if not a.network_args:
            return None
        out: dict[str, object] = {}
        for item in a.network_args:
            key, _, value = item.partition("=")
            out[key.strip()] = value.strip()
        out.setdefault("dropout", a.network_dropout)  # sd-scripts passes --network_dropout along (null if unset)
        return out

    def _base(self, a: TrainConfig, family: str, dataset, num_batches: int, num_epochs: int,  # noqa: ANN001
              optimizer: str, world: int) -> dict[str, str]:
        meta: dict[str, object] = options_metadata(a)  # every option declared with an ss_* key
        meta.update({
            "ss_session_id": self.session_id, "ss_training_started_at": self.started,
            "ss_num_train_images": dataset.num_train_images, "ss_num_reg_images": dataset.num_reg_images,
            "ss_num_validation_images": 0, "ss_num_batches_per_epoch": num_batches, "ss_num_epochs": num_epochs,
            "ss_sd_scripts_commit_hash": "", "ss_optimizer": optimizer,
        })
        meta.update(self._dataset_meta(a, dataset, world))
        model = Path(a.pretrained_model_name_or_path)
        meta["ss_sd_model_name"] = model.name
        if hashes := self.hashes.get("model"):
            meta["ss_sd_model_hash"], meta["ss_new_sd_model_hash"] = hashes
        if a.vae:
            meta["ss_vae_name"] = Path(a.vae).name
            if hashes := self.hashes.get("vae"):
                meta["ss_vae_hash"], meta["ss_new_vae_hash"] = hashes
        return {k: str(v) for k, v in meta.items()}

    @staticmethod
    def _dataset_meta(a: TrainConfig, dataset, world: int) -> dict[str, object]:  # noqa: ANN001
        tags = json.dumps(dataset.tag_frequency())
        dirs = json.dumps(dataset.dataset_dirs())
        if a.dataset_config:
            datasets = []
            for i, cfg in enumerate(dataset.configs):
                subsets = [{
                    "img_count": sum(1 for r in dataset.records if r.subset is s), "num_repeats": s.num_repeats,
                    "color_aug": s.color_aug, "flip_aug": s.flip_aug, "random_crop": s.random_crop,
                    "shuffle_caption": s.caption.shuffle_caption, "keep_tokens": s.caption.keep_tokens,
                    "keep_tokens_separator": s.caption.keep_tokens_separator,
                    "secondary_separator": s.caption.secondary_separator,
                    "enable_wildcard": s.caption.enable_wildcard, "caption_prefix": s.caption.caption_prefix,
                    "caption_suffix": s.caption.caption_suffix, "resize_interpolation": s.resize_interpolation,
                    **({"metadata_file": s.metadata_file.name} if s.metadata_file else
                       {"image_dir": s.image_dir.name, "class_tokens": s.class_tokens, "is_reg": s.is_reg}),
                } for s in cfg.subsets]
                records = [r for r in dataset.records if r.dataset_index == i]
                datasets.append({
                    "is_dreambooth": not any(s.metadata_file for s in cfg.subsets),
                    "batch_size_per_device": cfg.batch_size,
                    "num_train_images": sum(r.repeats for r in records if not r.subset.is_reg),
                    "num_reg_images": sum(r.repeats for r in records if r.subset.is_reg),
                    "resolution": list(cfg.resolution), "enable_bucket": cfg.enable_bucket,
                    "min_bucket_reso": cfg.min_bucket_reso, "max_bucket_reso": cfg.max_bucket_reso,
                    "tag_frequency": dataset.tag_frequency(i), "bucket_info": dataset.bucket_info(i),
                    "resize_interpolation": None, "subsets": subsets,
                })
            return {"ss_datasets": json.dumps(datasets), "ss_tag_frequency": tags, "ss_dataset_dirs": dirs}
        cfg = dataset.configs[0]
        sub = cfg.subsets[0] if cfg.subsets else None
        return {
            "ss_batch_size_per_device": cfg.batch_size, "ss_total_batch_size": cfg.batch_size * world *
            a.gradient_accumulation_steps, "ss_resolution": tuple(cfg.resolution),
            "ss_color_aug": sub.color_aug if sub else False, "ss_flip_aug": sub.flip_aug if sub else False,
            "ss_random_crop": sub.random_crop if sub else False,
            "ss_shuffle_caption": sub.caption.shuffle_caption if sub else False,
            "ss_enable_bucket": cfg.enable_bucket, "ss_bucket_no_upscale": cfg.bucket_no_upscale,
            "ss_min_bucket_reso": cfg.min_bucket_reso, "ss_max_bucket_reso": cfg.max_bucket_reso,
            "ss_keep_tokens": sub.caption.keep_tokens if sub else 0, "ss_dataset_dirs": dirs,
            "ss_reg_dataset_dirs": json.dumps(dataset.dataset_dirs(reg=True)), "ss_tag_frequency": tags,
            "ss_bucket_info": json.dumps(dataset.bucket_info()),
        }

    def for_save(self, epoch: int, step: int, final: bool = False) -> dict[str, str]:
        """Metadata of one file: minimum set, full set unless `--no_metadata`, and modelspec."""
        a = self.cfg
        meta = minimum_metadata(self.family, a.v_parameterization, a.network_module, a.network_dim,
                                a.network_alpha, self._network_args())
        if not a.no_metadata:
            meta.update(self.base)
            meta["ss_epoch"] = str(epoch)
            meta["ss_steps"] = str(step)
            if final:
                meta["ss_training_finished_at"] = str(time.time())
        res = a.resolution
        if isinstance(res, str) and res:
            parts = res.replace("x", ",").split(",")
            res = f"{parts[0]}x{parts[-1]}"
        extra = {f"modelspec.{k}": getattr(a, f"metadata_{k}") for k in
                 ("author", "description", "license", "tags", "usage_hint", "trigger_phrase")
                 if getattr(a, f"metadata_{k}", None)}
        meta.update(modelspec(self.family, a.v_parameterization, True, a.metadata_title or a.output_name,
                              resolution=res if res else None, clip_skip=a.clip_skip, extra=extra))
        if a.min_timestep or a.max_timestep != 1000:
            meta["modelspec.timestep_range"] = f"{a.min_timestep},{a.max_timestep}"
        return meta


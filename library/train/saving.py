"""Where and how a training run writes LoRA files: sd-scripts' file names, rotation of old saves, and the
`ss_*` + `modelspec.*` metadata (hashes are added by `library.lora_io.save_lora` after the final cast)."""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from argparse import Namespace
from pathlib import Path

from library.lora_io import file_hashes
from library.metadata import minimum_metadata, modelspec

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


class MetadataBuilder:
    """Collects the run's `ss_*` values once; `for_save` adds the per-save values (epoch, step, title)."""

    def __init__(self, args: Namespace, family: str, dataset, num_batches: int, num_epochs: int,  # noqa: ANN001
                 optimizer_description: str, world: int) -> None:
        self.args = args
        self.family = family
        self.started = time.time()
        self.session_id = random.randint(0, 2 ** 32)
        self.base = self._base(args, family, dataset, num_batches, num_epochs, optimizer_description, world)

    def _network_args(self) -> dict | None:
        a = self.args
        if not a.network_args:
            return None
        out: dict[str, object] = {}
        for item in a.network_args:
            key, _, value = item.partition("=")
            out[key.strip()] = value.strip()
        out.setdefault("dropout", a.network_dropout)  # sd-scripts passes --network_dropout along (null if unset)
        return out

    def _base(self, a: Namespace, family: str, dataset, num_batches: int, num_epochs: int,  # noqa: ANN001
              optimizer: str, world: int) -> dict[str, str]:
        meta: dict[str, object] = {
            "ss_session_id": self.session_id, "ss_training_started_at": self.started,
            "ss_output_name": a.output_name, "ss_learning_rate": a.learning_rate,
            "ss_text_encoder_lr": a.text_encoder_lr, "ss_unet_lr": a.unet_lr,
            "ss_num_train_images": dataset.num_train_images, "ss_num_reg_images": dataset.num_reg_images,
            "ss_num_validation_images": 0, "ss_num_batches_per_epoch": num_batches, "ss_num_epochs": num_epochs,
            "ss_gradient_checkpointing": a.gradient_checkpointing,
            "ss_gradient_accumulation_steps": a.gradient_accumulation_steps,
            "ss_max_train_steps": a.max_train_steps, "ss_lr_warmup_steps": a.lr_warmup_steps,
            "ss_lr_scheduler": a.lr_scheduler, "ss_network_dropout": a.network_dropout,
            "ss_mixed_precision": a.mixed_precision, "ss_full_fp16": a.full_fp16, "ss_clip_skip": a.clip_skip,
            "ss_max_token_length": a.max_token_length, "ss_cache_latents": a.cache_latents, "ss_seed": a.seed,
            "ss_lowram": a.lowram, "ss_noise_offset": a.noise_offset,
            "ss_multires_noise_iterations": a.multires_noise_iterations,
            "ss_multires_noise_discount": a.multires_noise_discount,
            "ss_adaptive_noise_scale": a.adaptive_noise_scale, "ss_zero_terminal_snr": a.zero_terminal_snr,
            "ss_training_comment": a.training_comment, "ss_sd_scripts_commit_hash": "",
            "ss_optimizer": optimizer, "ss_max_grad_norm": a.max_grad_norm,
            "ss_caption_dropout_rate": a.caption_dropout_rate,
            "ss_caption_dropout_every_n_epochs": a.caption_dropout_every_n_epochs,
            "ss_caption_tag_dropout_rate": a.caption_tag_dropout_rate, "ss_face_crop_aug_range": None,
            "ss_prior_loss_weight": a.prior_loss_weight, "ss_min_snr_gamma": a.min_snr_gamma,
            "ss_scale_weight_norms": a.scale_weight_norms, "ss_ip_noise_gamma": a.ip_noise_gamma,
            "ss_debiased_estimation": a.debiased_estimation_loss,
            "ss_noise_offset_random_strength": a.noise_offset_random_strength,
            "ss_ip_noise_gamma_random_strength": a.ip_noise_gamma_random_strength, "ss_loss_type": a.loss_type,
            "ss_huber_schedule": a.huber_schedule, "ss_huber_scale": a.huber_scale, "ss_huber_c": a.huber_c,
            "ss_fp8_base": False, "ss_fp8_base_unet": False, "ss_validation_seed": None,
            "ss_validation_split": 0.0, "ss_max_validation_steps": None, "ss_validate_every_n_epochs": None,
            "ss_validate_every_n_steps": None, "ss_resize_interpolation": a.resize_interpolation,
        }
        meta.update(self._dataset_meta(a, dataset, world))
        model = Path(a.pretrained_model_name_or_path)
        meta["ss_sd_model_name"] = model.name
        if model.is_file():
            meta["ss_sd_model_hash"], meta["ss_new_sd_model_hash"] = file_hashes(model)
        if a.vae:
            vae = Path(a.vae)
            meta["ss_vae_name"] = vae.name
            if vae.is_file():
                meta["ss_vae_hash"], meta["ss_new_vae_hash"] = file_hashes(vae)
        return {k: str(v) for k, v in meta.items()}

    @staticmethod
    def _dataset_meta(a: Namespace, dataset, world: int) -> dict[str, object]:  # noqa: ANN001
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
                    "image_dir": s.image_dir.name, "class_tokens": s.class_tokens, "is_reg": s.is_reg,
                } for s in cfg.subsets]
                records = [r for r in dataset.records if r.dataset_index == i]
                datasets.append({
                    "is_dreambooth": True, "batch_size_per_device": cfg.batch_size,
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
        a = self.args
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


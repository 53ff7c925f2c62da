"""The LoRA training loop: batches -> text conditioning + noisy latents -> U-Net -> loss -> optimizer step, with
gradient accumulation, multi-process gradient averaging, periodic saves, samples and TensorBoard logs.

Ctrl-C or SIGTERM stops after the current optimizer step (all ranks agree through the gradient all-reduce); with
`--save_state` a resumable state is written then. Every save is atomic, so nothing before the last save is lost.
"""

from __future__ import annotations

import logging
import math
import random
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from library.cli import str_to_dtype
from library.errors import ToolkitError
from library.files import check_output_dir
from library.models import peek_family
from library.models.arch import LATENT_SCALE
from library.train import guards, preflight, saving
from library.train.compile import compile_unet, uncompiled
from library.train.distributed import Distributed
from library.train.objective import Objective, ObjectiveConfig
from library.train.optim import build_optimizer, build_scheduler, current_lrs, int_or_ratio, steps_for_epochs
from library.train.progress import ProgressFeed
from library.train.sampling import load_prompts, sample_images
from library.train.setup import (
    build_dataset,
    build_network,
    cache_dataset_latents,
    cache_dataset_text,
    caches_text,
    check_family,
    check_text_cache,
    give_back_memory,
    load_training_models,
    load_training_unet,
    resolve_precision,
)
from library.train.state import load_state, read_position, save_state
from library.train.text import text_conditioner
from library.train.trackers import Trackers, check_trackers
from library.train.validation import build_validator

if TYPE_CHECKING:
    from library.options.train import TrainConfig

log = logging.getLogger(__name__)


class LossScaler:
    """Dynamic loss scaling for fp16 (halve on overflow, double after 2000 clean steps); works for fp16 LoRA
    weights too, which torch's GradScaler refuses to unscale."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.scale, self.good = enabled, 2.0 ** 16, 0

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.enabled else loss

    def unscale(self, params: list[torch.Tensor]) -> bool:
        """Divide grads by the scale; False when any is inf/nan (then the step must be skipped)."""
        if not self.enabled:
            return True
        finite = True
        for p in params:
            if p.grad is not None:
                p.grad.div_(self.scale)
                finite = finite and bool(torch.isfinite(p.grad).all())
        if finite:
            self.good += 1
            if self.good % 2000 == 0:
                self.scale *= 2
        else:
            self.scale, self.good = self.scale / 2, 0
        return finite


class _StopFlag:
    """Ctrl-C/SIGTERM once: stop after this step; twice: stop now."""

    def __init__(self) -> None:
        self.requested = False
        self._old = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stop requested: finishing this step (press Ctrl-C again to stop at once)")

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Trainer:
    """One training run, configured by a TrainConfig (library/options: the options of train_network.py)."""

    def __init__(self, cfg: TrainConfig, sdxl_script: bool = False) -> None:
        self.cfg = cfg
        self.sdxl_script = sdxl_script
        self.dist = Distributed()
        self.feed = ProgressFeed(cfg.progress_jsonl, self.dist.is_main)
        self.precision = resolve_precision(cfg, self.dist.device)
        seed = cfg.seed if cfg.seed is not None else random.randint(0, 2 ** 31 - 1)
        self.seed = cfg.seed = self.dist.broadcast_int(seed)
        self.out_dir = check_output_dir(Path(cfg.output_dir or "."), "--output_dir")
        self.ext = saving.EXTENSIONS.get(cfg.save_model_as or "safetensors")
        if self.ext is None:
            raise ToolkitError(f"--save_model_as {cfg.save_model_as}: a LoRA is saved as safetensors, ckpt or pt")
        self.save_dtype = str_to_dtype(cfg.save_precision)
        check_trackers(cfg)
        self._seed_everything(self.seed)
        self.objective = Objective(ObjectiveConfig(**{k: getattr(cfg, k) for k in
                                                      ObjectiveConfig.__dataclass_fields__}))
        self.prompts = load_prompts(cfg.sample_prompts) if cfg.sample_prompts else []
        model = cfg.pretrained_model_name_or_path
        if not model:
            raise ToolkitError("--pretrained_model_name_or_path is required (a .safetensors/.ckpt file or a "
                               "Diffusers folder)")
        if not Path(model).exists():
            raise ToolkitError(f"--pretrained_model_name_or_path {model}: not found (nothing is downloaded: give a "
                               "local .safetensors/.ckpt file or Diffusers folder)")
        self.family = peek_family(model) or ("sdxl" if sdxl_script else None)
        check_family(cfg, self.family, sdxl_script)
        preflight.check_inputs(cfg, self.family)
        self.identity = preflight.run_identity(cfg)

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)

    # ---- setup ------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        a, p = self.cfg, self.precision
        self.feed.emit("setup")
        hashes = saving.ModelHashes(a)  # in the background while the models load and the caches fill
        self.dataset = build_dataset(a, self.seed, self.family)
        check_text_cache(a, self.dataset, self.family)
        self.bundle = load_training_models(a, p, self.sdxl_script)
        self.latent_scale = LATENT_SCALE[self.bundle.family]
        caching = a.cache_latents or a.cache_latents_to_disk or self.dataset.has_precomputed_latents()
        if caching:
            cache_dataset_latents(a, self.dataset, self.bundle.vae, self.dist, self.seed, self.bundle.is_sdxl)
        self.validator = build_validator(a, self.seed, self.family, (lambda ds: cache_dataset_latents(
            a, ds, self.bundle.vae, self.dist, self.seed, self.bundle.is_sdxl)) if caching else None)
        if caching and not self.prompts:  # nothing decodes or encodes any more: give the VAE's memory back
            self.bundle.vae = None
            give_back_memory()
        self.text = text_conditioner(self.bundle, a.clip_skip, a.max_token_length, a.weighted_captions)
        if caches_text(a):
            cache_dataset_text(a, self.dataset, self.bundle, self.text, self.dist, p)
            if self.validator:
                cache_dataset_text(a, self.validator.dataset, self.bundle, self.text, self.dist, p)
            self._release_text_encoders()
        load_training_unet(a, p, self.bundle)  # after the caches: the freed models make room for it
        torch.manual_seed(self.seed)  # identical LoRA initialisation on every rank
        self.network, self.train_unet, self.train_te = build_network(a, self.bundle)
        if self.precision.full_half:
            self.network.to(p.weight_dtype)
        self.network.to(p.device)
        if a.gradient_checkpointing:
            self.bundle.unet.enable_gradient_checkpointing()
            if self.train_te:
                # non-reentrant: frozen embeddings give inputs without grad, which reentrant checkpoints would cut
                for te in self.bundle.text_encoders:
                    te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.network.enable_gradient_checkpointing()
        self.network.prepare_grad_etc(self.te_arg, self.bundle.unet)
        self.unet_call = self.bundle.unet
        if a.torch_compile:
            self.unet_call = compile_unet(self.bundle.unet, a.dynamo_backend, p.device)
        self.params = [q for q in self.network.parameters() if q.requires_grad]
        self.dist.broadcast_params(self.params)
        self._schedule()
        self.scaler = LossScaler(p.mixed == "fp16")
        self.metadata = saving.MetadataBuilder(a, self.bundle.family, self.dataset, self.dataset.num_batches(),
                                               self.num_epochs, self.opt.description, self.dist.world, hashes)
        if self.validator:
            self.metadata.base["ss_num_validation_images"] = str(len(self.validator.dataset.records))
        self._seed_everything(self.seed + self.dist.rank)  # different noise on each rank from here on
        self.global_step, self.start_epoch, self.skip_batches = 0, 0, 0
        if a.resume:
            self._resume()
        elif a.initial_step or a.initial_epoch:
            self._initial_position()

    def _release_text_encoders(self) -> None:
        """After caching their outputs the encoders only serve samples: drop them, or park them on the CPU."""
        if not self.prompts:
            self.bundle.text_encoders = []
            self.text.release_encoders()
            give_back_memory()
        elif self.precision.device.type != "cpu":
            for te in self.bundle.text_encoders:
                te.to("cpu")
            torch.cuda.empty_cache()

    @property
    def te_arg(self):  # noqa: ANN201 - what networks' hooks take: one text encoder, or SDXL's list
        tes = self.bundle.text_encoders
        return tes[0] if len(tes) == 1 else tes

    def _schedule(self) -> None:
        a = self.cfg
        from library.data.dataset import EpochSampler

        self.sampler = EpochSampler(self.dataset, self.dist.rank, self.dist.world, a.gradient_accumulation_steps)
        spe = self.sampler.steps_per_epoch()
        if a.max_train_epochs:
            a.max_train_steps = steps_for_epochs(a.max_train_epochs, self.dataset.num_batches(), self.dist.world,
                                                 a.gradient_accumulation_steps)
        self.steps_per_epoch = spe
        self.num_epochs = math.ceil(a.max_train_steps / spe)
        if a.save_n_epoch_ratio:
            a.save_every_n_epochs = math.floor(self.num_epochs / a.save_n_epoch_ratio) or 1
        self.dataset.max_train_steps = a.max_train_steps
        groups = self.network.prepare_optimizer_params(a.text_encoder_lr, a.unet_lr, a.learning_rate)
        groups = groups[0] if isinstance(groups, tuple) else groups
        if not groups:
            raise ToolkitError("nothing to train: every parameter group has learning rate 0")
        self.opt = build_optimizer(a.optimizer_type, a.optimizer_args, groups, a.learning_rate)
        total = a.max_train_steps * self.dist.world  # sd-scripts counts scheduler steps over all processes
        name = self.opt.scheduler_override or a.lr_scheduler
        self.lr_scheduler = build_scheduler(name, self.opt.optimizer, total, int_or_ratio(a.lr_warmup_steps, total),
                                            int_or_ratio(a.lr_decay_steps, total), a.lr_scheduler_num_cycles,
                                            a.lr_scheduler_power, a.lr_scheduler_timescale,
                                            a.lr_scheduler_min_lr_ratio, a.lr_scheduler_type, a.lr_scheduler_args)
        log.info("%d batches per epoch per process, %d optimizer steps per epoch, %d epochs, %d steps",
                 len(self.sampler), spe, self.num_epochs, a.max_train_steps)

    def _resume(self) -> None:
        path = Path(self.cfg.resume)
        if not path.is_dir():
            raise ToolkitError(f"--resume {path}: folder not found")
        read_position(path)
        extra = load_state(path, self.network, self.opt.optimizer, self.lr_scheduler, self.dist.rank)
        self.scaler.scale = float(extra.get("loss_scale", self.scaler.scale))
        _, step = read_position(path)
        self.global_step = step
        self.start_epoch, within = divmod(step, self.steps_per_epoch)
        self.skip_batches = within * self.cfg.gradient_accumulation_steps
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, step, self.start_epoch + 1,
                 self.skip_batches)

    def _initial_position(self) -> None:
        a = self.cfg
        step = a.initial_step if a.initial_step else (a.initial_epoch - 1) * self.steps_per_epoch
        self.global_step = step
        self.start_epoch, within = divmod(step, self.steps_per_epoch)
        self.skip_batches = within * a.gradient_accumulation_steps if a.skip_until_initial_step else 0

    # ---- one step ---------------------------------------------------------------------------------------------
    def _latents(self, batch: dict) -> torch.Tensor:
        if batch["latents"] is not None:
            latents = batch["latents"].to(self.precision.device)
        else:
            vae = self.bundle.vae
            with torch.no_grad():
                images = batch["images"].to(self.precision.device, self.precision.vae_dtype)
                latents = vae.encode(images).latent_dist.sample()
        return latents.float() * self.latent_scale

    def _forward_loss(self, batch: dict, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """The batch's loss; `timesteps` fixes them (validation), else they are drawn."""
        p = self.precision
        latents = self._latents(batch)
        with p.autocast():
            with torch.set_grad_enabled(self.train_te and torch.is_grad_enabled()):
                cond, added = self.text.for_batch(batch, p.device, p.weight_dtype)
            noise = self.objective.noise_like(latents)
            if timesteps is None:
                t = self.objective.timesteps(latents.shape[0], latents.device)
            else:
                t = timesteps.to(latents.device)
            noisy = self.objective.add_noise(latents, noise, t)
            pred = self.unet_call(noisy.to(p.weight_dtype), t, cond, added_cond_kwargs=added).sample
        self.last_inputs = (latents, cond, batch["captions"])  # what a non-finite loss is traced back to
        target = self.objective.target(latents, noise, t)
        return self.objective.loss(pred, target, t, batch["loss_weights"], batch.get("masks"))

    def _optimizer_step(self) -> None:
        a = self.cfg
        if self.scaler.unscale(self.params):
            if a.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.params, a.max_grad_norm)
            self.opt.optimizer.step()
            for _ in range(self.dist.world):  # sd-scripts' scheduler counts steps of all processes
                self.lr_scheduler.step()
        else:
            log.debug("fp16 overflow: step skipped, loss scale %g", self.scaler.scale)
        self.opt.optimizer.zero_grad(set_to_none=True)
        if a.scale_weight_norms:
            self.last_norms = self.network.apply_max_norm_regularization(a.scale_weight_norms, self.precision.device)

    # ---- run --------------------------------------------------------------------------------------------------
    def run(self) -> Path | None:
        a = self.cfg
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=None, sampler=self.sampler, num_workers=self._workers(),
            persistent_workers=bool(a.persistent_data_loader_workers and self._workers()),
            generator=torch.Generator().manual_seed(self.seed))  # keeps the global RNG (noise) untouched
        self.writer = self._writer()
        bar = tqdm(total=a.max_train_steps, initial=self.global_step, desc="steps", disable=not self.dist.is_main,
                   dynamic_ncols=True)
        losses: list[float] = []
        self.last_norms = None
        self.val_postfix: dict[str, str] = {}
        self.val_losses: list[tuple[str, int, float]] = []
        if self.opt.schedule_free:
            self.opt.optimizer.train()
        stopped = False
        with _StopFlag() as stop, logging_redirect_tqdm():  # from here Ctrl-C stops after a step, state saved
            self.feed.emit("start", step=self.global_step, epoch=self.start_epoch + 1, max_steps=a.max_train_steps,
                           epochs=self.num_epochs, steps_per_epoch=self.steps_per_epoch)
            if a.sample_at_first:  # Ctrl-C during the base samples: one step, then the state
                self._sample(epoch=None)
            self._train_mode(True)
            for epoch in range(self.start_epoch, self.num_epochs):
                if self.global_step >= a.max_train_steps:
                    break
                skip = self.skip_batches if epoch == self.start_epoch else 0
                self.sampler.set_epoch(epoch, skip)
                self.network.on_epoch_start(self.te_arg, self.bundle.unet)
                self._train_mode(True)
                epoch_losses: list[float] = []
                n_batches = self.sampler.batches_per_epoch
                positions: list[int] = []
                for k, batch in enumerate(loader, start=skip):
                    positions.append(batch["position"])
                    loss = self._forward_loss(batch)
                    guards.check_loss(loss, self.global_step + 1, getattr(self, "last_saved", None),
                                      self.last_inputs)
                    self.scaler.scaled(loss / a.gradient_accumulation_steps).backward()
                    epoch_losses.append(float(loss.detach()))
                    if (k + 1) % a.gradient_accumulation_steps and k + 1 < n_batches:
                        continue
                    stopped = self.dist.average_gradients(self.params, stop.requested)
                    self._optimizer_step()
                    self.global_step += 1
                    losses.append(epoch_losses[-1])
                    avg = sum(epoch_losses) / len(epoch_losses)
                    bar.update(1)
                    self._log_step(epoch_losses[-1], avg)
                    self.feed.emit("step", step=self.global_step, epoch=epoch + 1, loss=epoch_losses[-1],
                                   avg_loss=avg, lr=current_lrs(self.opt.optimizer))
                    if self.validator and self.validator.due_after_step(self.global_step):
                        self._validate("step", avg, self.global_step)
                    bar.set_postfix(avr_loss=f"{avg:.4f}", loss=f"{epoch_losses[-1]:.4f}", **self.val_postfix)
                    self._after_step(epoch)
                    if stopped or self.global_step >= a.max_train_steps:
                        break
                log.debug("rank %d epoch %d: batches %s", self.dist.rank, epoch + 1, positions)
                if stopped:
                    break
                if self.writer and epoch_losses:
                    self.writer.add_scalar("loss/epoch", sum(epoch_losses) / len(epoch_losses), epoch + 1)
                if self.validator and epoch_losses and self.validator.due_after_epoch(epoch + 1):
                    self._validate("epoch", sum(epoch_losses) / len(epoch_losses), epoch + 1)
                    bar.set_postfix(avr_loss=f"{sum(epoch_losses) / len(epoch_losses):.4f}", **self.val_postfix)
                if epoch_losses:
                    self.feed.emit("epoch", epoch=epoch + 1, step=self.global_step,
                                   avg_loss=sum(epoch_losses) / len(epoch_losses))
                self._after_epoch(epoch)
        bar.close()
        self.losses = losses
        if log.isEnabledFor(logging.DEBUG):  # hashing every LoRA tensor costs seconds on SDXL
            log.debug("rank %d: LoRA checksum %s", self.dist.rank, self._checksum())
        if stopped:
            self._on_interrupt()
            raise KeyboardInterrupt
        final = self._save_final()
        if self.writer:
            self.writer.close()
        self.feed.emit("end", status="done", step=self.global_step, path=final)
        self.feed.close()
        return final

    def _validate(self, kind: str, train_loss: float, at: int) -> None:
        """One validation (library/train/validation.py); logged at `at` (a step, or an epoch for "epoch")."""
        if self.opt.schedule_free:
            self.opt.optimizer.eval()
        self._train_mode(False)
        loss = self.validator.run(self._forward_loss, self.dist.is_main)
        self._train_mode(True)
        if self.opt.schedule_free:
            self.opt.optimizer.train()
        self.val_losses.append((kind, at, loss))
        self.feed.emit("validation", kind=kind, at=at, loss=loss)
        self.val_postfix = {"val_loss": f"{loss:.4f}"}
        log.debug("validation (%s %d): %.6f", kind, at, loss)
        if self.writer:
            self.writer.add_scalar(f"loss/validation/{kind}_average", loss, at)
            self.writer.add_scalar(f"loss/validation/{kind}_divergence", loss - train_loss, at)

    def _checksum(self) -> str:
        """SHA-256 of this rank's LoRA tensors (ranks must agree after every step)."""
        import hashlib

        h = hashlib.sha256()
        for k, v in sorted(self.network.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()

    def _workers(self) -> int:
        import os

        return max(0, min(self.cfg.max_data_loader_n_workers, os.cpu_count() or 1))

    def _train_mode(self, on: bool) -> None:
        # Models run in train mode only for gradient checkpointing (SD models have no dropout to switch)
        ckpt = bool(self.cfg.gradient_checkpointing) and on
        self.bundle.unet.train(ckpt)
        for te in self.bundle.text_encoders:
            te.train(ckpt and self.train_te)
        self.network.train(on)

    def _writer(self) -> Trackers | None:
        """TensorBoard and/or wandb (library/train/trackers.py), on the main process only."""
        if not self.dist.is_main:
            return None
        return Trackers(self.cfg, self.out_dir) or None

    def _log_step(self, loss: float, avg: float) -> None:
        if not self.writer:
            return
        s = self.global_step
        self.writer.add_scalar("loss/current", loss, s)
        self.writer.add_scalar("loss/average", avg, s)
        lrs = current_lrs(self.opt.optimizer)
        names = ["textencoder", "unet"] if self.train_te and self.train_unet and len(lrs) >= 2 else \
            (["textencoder"] if self.train_te and not self.train_unet else ["unet"])
        for i, lr in enumerate(lrs):
            self.writer.add_scalar(f"lr/{names[i] if i < len(names) else f'group{i}'}", lr, s)
        if self.last_norms is not None:
            scaled, mean_norm, max_norm = self.last_norms
            self.writer.add_scalar("max_norm/keys_scaled", scaled, s)
            self.writer.add_scalar("max_norm/average_key_norm", mean_norm, s)
            self.writer.add_scalar("max_norm/max_key_norm", max_norm, s)

    # ---- saves and samples ------------------------------------------------------------------------------------
    def _save_lora(self, stem: str, epoch: int, final: bool = False) -> Path:
        path = self.out_dir / (stem + self.ext)
        if self.dist.is_main:
            meta = self.metadata.for_save(epoch, self.global_step, final)
            if self.opt.schedule_free:
                self.opt.optimizer.eval()
            self.last_saved = guards.save_network(self.network, path, self.save_dtype, meta)
            if self.opt.schedule_free:
                self.opt.optimizer.train()
            log.info("saved %s", path)
            self.feed.emit("save", kind="lora", path=path, step=self.global_step)
        self.dist.barrier()
        return path

    def _save_state(self, stem: str, epoch: int) -> None:
        save_state(self.out_dir / f"{stem}-state", self.network, self.opt.optimizer, self.lr_scheduler, epoch,
                   self.global_step, self.dist.rank, self.dist.barrier, {"loss_scale": self.scaler.scale}, self.identity)
        self.feed.emit("save", kind="state", path=self.out_dir / f"{stem}-state", step=self.global_step)

    def _after_step(self, epoch: int) -> None:
        a, s = self.cfg, self.global_step
        if a.save_every_n_steps and s % a.save_every_n_steps == 0 and s < a.max_train_steps:
            self._save_lora(saving.step_name(a.output_name, s), epoch + 1)
            if a.save_state:
                self._save_state(saving.step_name(a.output_name, s), epoch)
            if self.dist.is_main:
                old = saving.old_step_to_remove(s, a.save_every_n_steps, a.save_last_n_steps)
                if old:
                    saving.remove_if_exists(self.out_dir / (saving.step_name(a.output_name, old) + self.ext))
                old = saving.old_step_to_remove(s, a.save_every_n_steps, a.save_last_n_steps_state or
                                                a.save_last_n_steps)
                if old:
                    saving.remove_if_exists(self.out_dir / f"{saving.step_name(a.output_name, old)}-state")
        if a.sample_every_n_steps and not a.sample_every_n_epochs and s % a.sample_every_n_steps == 0:
            self._sample(epoch=None)

    def _after_epoch(self, epoch: int) -> None:
        a, e = self.cfg, epoch + 1
        if a.save_every_n_epochs and e % a.save_every_n_epochs == 0 and e < self.num_epochs:
            self._save_lora(saving.epoch_name(a.output_name, e), e)
            if a.save_state:
                self._save_state(saving.epoch_name(a.output_name, e), e)
            if self.dist.is_main:
                old = saving.old_epoch_to_remove(e, a.save_every_n_epochs, a.save_last_n_epochs)
                if old:
                    saving.remove_if_exists(self.out_dir / (saving.epoch_name(a.output_name, old) + self.ext))
                old = saving.old_epoch_to_remove(e, a.save_every_n_epochs, a.save_last_n_epochs_state or
                                                 a.save_last_n_epochs)
                if old:
                    saving.remove_if_exists(self.out_dir / f"{saving.epoch_name(a.output_name, old)}-state")
        if a.sample_every_n_epochs and e % a.sample_every_n_epochs == 0:
            self._sample(epoch=e)

    def _save_final(self) -> Path:
        a = self.cfg
        epoch = min(self.num_epochs, math.ceil(self.global_step / self.steps_per_epoch))
        path = self._save_lora(saving.last_name(a.output_name), epoch, final=True)
        if a.save_state or a.save_state_on_train_end:
            self._save_state(saving.last_name(a.output_name), epoch)
        return path

    def _on_interrupt(self) -> None:
        """Ctrl-C / SIGTERM / the UI's Stop: always save a resumable state (a stop is a pause, not a loss)."""
        epoch = self.global_step // self.steps_per_epoch
        stem = saving.step_name(self.cfg.output_name, self.global_step)
        self._save_state(stem, epoch)
        log.warning("interrupted at step %d; resume with --resume %s", self.global_step,
                    self.out_dir / f"{stem}-state")
        self.feed.emit("end", status="interrupted", step=self.global_step, path=self.out_dir / f"{stem}-state")
        self.feed.close()

    def _sample(self, epoch: int | None) -> None:
        if not self.prompts:
            return
        if self.dist.is_main:
            p = self.precision
            self.bundle.vae.to(p.device)
            for te in self.bundle.text_encoders:
                te.to(p.device)
            self._train_mode(False)
            pipe = None
            if self.bundle.is_sdxl:
                from library.generate.pipeline import build_pipeline

                pipe = build_pipeline(self.bundle)
            with uncompiled(self.bundle.unet):
                images = sample_images(self.out_dir, self.cfg.output_name, self.prompts, self.bundle.unet, self.bundle.vae,
                              self.text, self.cfg.sample_sampler, self.cfg.v_parameterization, self.latent_scale,
                              p.device, p.weight_dtype, epoch, self.global_step, p.autocast, pipe)
            self.feed.emit("sample", step=self.global_step, epoch=epoch, files=images)
            if getattr(self, "writer", None):
                self.writer.add_images(images, self.global_step)
            if caches_text(self.cfg):
                self._release_text_encoders()
            self._train_mode(True)
        self.dist.barrier()


def train(cfg: TrainConfig, sdxl_script: bool = False) -> Path | None:
    """Run one training from its typed configuration (`sdxl_script`: sdxl_train_network.py, which refuses
    non-SDXL models); returns the final LoRA file (None with --debug_dataset, which trains nothing)."""
    if cfg.debug_dataset:
        from library.train.debug_dataset import debug_dataset

        debug_dataset(cfg, sdxl_script)
        return None
    trainer = Trainer(cfg, sdxl_script)
    trainer.setup()
    return trainer.run()

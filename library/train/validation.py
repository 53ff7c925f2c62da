"""Validation loss: the held-out images (library/data/validation.py) run through the training objective without
gradients, at fixed, evenly spaced timesteps and with noise drawn from a fixed seed, so two validations of the
same weights give the same number. As sd-scripts: 4 timesteps spread over [min_timestep, max_timestep], every
validation batch at each; logged as `loss/validation/step_average` (every `--validate_every_n_steps`) and
`loss/validation/epoch_average` (every `--validate_every_n_epochs`, default every epoch), each with a
`..._divergence` (validation minus training loss).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from library.data.dataset import BatchRequest, TrainDataset

if TYPE_CHECKING:
    from library.options.train import TrainConfig

log = logging.getLogger(__name__)
NUM_TIMESTEPS = 4


def validation_timesteps(min_timestep: int, max_timestep: int) -> list[int]:
    """4 evenly spaced timesteps strictly inside [min, max] (0..1000 -> 200, 400, 600, 800)."""
    return [int(t) for t in np.linspace(min_timestep, max_timestep, NUM_TIMESTEPS + 2, dtype=int)[1:-1]]


@contextlib.contextmanager
def fixed_rng(seed: int) -> Iterator[None]:
    """Run a block with every RNG seeded by `seed`, then put the training RNGs back as they were."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


class Validator:
    """When to validate and how: the validation dataset's batches in a fixed order, capped at
    `--max_validation_steps`, each at the fixed timesteps."""

    def __init__(self, dataset: TrainDataset, cfg: TrainConfig, seed: int) -> None:
        self.dataset = dataset
        self.seed = cfg.validation_seed if cfg.validation_seed is not None else seed
        self.every_n_steps = cfg.validate_every_n_steps
        self.every_n_epochs = cfg.validate_every_n_epochs
        batches = dataset.plan_fixed()
        if cfg.max_validation_steps is not None:
            batches = batches[:cfg.max_validation_steps]
        self.requests = [BatchRequest(tuple(b), 0, k) for k, b in enumerate(batches)]
        self.timesteps = validation_timesteps(cfg.min_timestep or 0, 1000 if cfg.max_timestep is None
                                              else cfg.max_timestep)
        self.batches_run = 0  # batches of the last validation (a test's view of --max_validation_steps)

    def due_after_step(self, step: int) -> bool:
        return bool(self.every_n_steps) and step % self.every_n_steps == 0

    def due_after_epoch(self, epoch: int) -> bool:
        return self.every_n_epochs is None or epoch % self.every_n_epochs == 0

    @torch.no_grad()
    def run(self, loss_fn: Callable[[dict, torch.Tensor], torch.Tensor], show_progress: bool = True) -> float:
        """Mean loss over the validation batches and timesteps; `loss_fn(batch, timesteps)` is the training loss."""
        losses = []
        bar = tqdm(total=len(self.requests) * len(self.timesteps), desc="validation", leave=False,
                   disable=not show_progress, dynamic_ncols=True)
        with fixed_rng(self.seed):
            for req in self.requests:
                batch = self.dataset[req]
                n = len(batch["captions"])
                for t in self.timesteps:
                    losses.append(float(loss_fn(batch, torch.full((n,), t, dtype=torch.long))))
                    bar.update(1)
                    bar.set_postfix(val_loss=f"{sum(losses) / len(losses):.4f}", timestep=t)
        bar.close()
        self.batches_run = len(self.requests)
        return sum(losses) / len(losses)


def build_validator(cfg: TrainConfig, seed: int, family: str | None,
                    cache: Callable[[TrainDataset], None] | None) -> Validator | None:
    """The run's Validator, or None without a validation split (a split that holds no image only warns);
    `cache` encodes the validation images' latents when the run caches latents."""
    from library.train.setup import dataset_configs

    configs = dataset_configs(cfg, family)
    if not any(c.validation_split > 0 for c in configs):
        return None
    dataset = TrainDataset(configs, seed, cfg.prior_loss_weight, cfg.cache_latents or cfg.cache_latents_to_disk,
                           validation=True)
    if not dataset.records:
        log.warning("validation_split: no image is held out (too few images); no validation")
        return None
    if cache is not None:
        cache(dataset)
    log.info("validation: %d images, %d batches, timesteps %s", len(dataset.records), dataset.num_batches(),
             validation_timesteps(cfg.min_timestep or 0, cfg.max_timestep or 1000))
    return Validator(dataset, cfg, seed)

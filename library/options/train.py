"""The typed configuration of a training run (`TrainConfig`: every option of train_network.py and
sdxl_train_network.py as one flat dataclass), the groups it is made of, and the rules between options."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

from library.options.spec import REFUSED, TRAIN, Option, opt, options_of
from library.options.train_model import (
    CachingOptions,
    DatasetFileKeys,
    DatasetOptions,
    ModelOptions,
    NetworkOptions,
)
from library.options.train_run import (
    LoggingOptions,
    OptimizerOptions,
    PrecisionOptions,
    SamplingOptions,
    SavingOptions,
    TrainingOptions,
)

log = logging.getLogger(__name__)


@dataclass
class ConfigFileOptions:
    GROUP = "config file"
    config_file: str | None = opt(str, None, "TOML of options (sd-scripts' format); the command line overrides it",
                                  metavar="PATH", scripts=("train_network", "sdxl_train_network"))
    output_config: bool = opt(None, False, "write the options given to --config_file and exit (never overwrites "
                              "a file)")


# help order of the groups; the order sd-scripts' parser uses, roughly
TRAIN_GROUPS: tuple[type, ...] = (ConfigFileOptions, ModelOptions, NetworkOptions, DatasetOptions, CachingOptions,
                                  TrainingOptions, OptimizerOptions, PrecisionOptions, SavingOptions,
                                  SamplingOptions, LoggingOptions)
# options that describe how to read the command line, not the run
NOT_SETTINGS = ("config_file", "output_config", "verbosity")


@dataclass
class TrainConfig(LoggingOptions, SamplingOptions, SavingOptions, PrecisionOptions, OptimizerOptions,
                  TrainingOptions, CachingOptions, DatasetOptions, NetworkOptions, ModelOptions):
    """Every setting of a training run, by its command-line name (defaults as sd-scripts')."""


# pairs that make no sense together: refused while parsing
EXCLUSIVE: tuple[tuple[str, str], ...] = (
    ("network_train_unet_only", "network_train_text_encoder_only"),
    ("full_fp16", "full_bf16"),
    ("use_8bit_adam", "use_lion_optimizer"),
    ("cache_latents", "color_aug"),
    ("cache_latents", "random_crop"),
    ("cache_latents_to_disk", "color_aug"),
    ("cache_latents_to_disk", "random_crop"),
    # cached text-encoder outputs hold no caption weights (sd-scripts refuses the pair too)
    ("weighted_captions", "cache_text_encoder_outputs"),
    ("weighted_captions", "cache_text_encoder_outputs_to_disk"),
)


def train_options(script: str = TRAIN) -> list[Option]:
    """The options of a training script, in help order."""
    return [o for cls in TRAIN_GROUPS for o in options_of(cls) if script in o.scripts]


def dataset_keys() -> dict[str, Option]:
    """Keys of a dataset TOML: the options that may be set per dataset/subset, and the TOML-only keys."""
    return {o.name: o for cls in (*TRAIN_GROUPS, DatasetFileKeys) for o in options_of(cls) if o.dataset}


def dataset_cli_names() -> dict[str, str]:
    """Dataset keys whose command-line option has another name (`batch_size` <- `--train_batch_size`)."""
    return {o.dataset_key: o.name for cls in TRAIN_GROUPS for o in options_of(cls) if o.dataset_key}


def refused_dataset_keys() -> dict[str, str]:
    """Dataset keys this toolkit refuses when set, with the reason."""
    return {k: o.why for k, o in dataset_keys().items() if o.status == REFUSED}


def options_metadata(cfg: TrainConfig, script: str = TRAIN) -> dict[str, object]:
    """The `ss_*` metadata of the options that declare one (values as the run uses them)."""
    return {o.meta: getattr(cfg, o.name) for o in train_options(script) if o.meta}


def config_from_values(values: dict) -> TrainConfig:
    """A TrainConfig from option values by name (extra names such as config_file are dropped)."""
    return TrainConfig(**{f.name: values[f.name] for f in fields(TrainConfig) if f.name in values})


def apply_aliases(cfg: TrainConfig) -> TrainConfig:
    """Resolve sd-scripts' old spellings and implied options (what they mean, not what was typed)."""
    if cfg.use_8bit_adam:
        cfg.optimizer_type = "AdamW8bit"
    if cfg.use_lion_optimizer:
        cfg.optimizer_type = "Lion"
    if cfg.log_with is None and cfg.logging_dir:
        cfg.log_with = "tensorboard"
    if cfg.cache_latents_to_disk:
        cfg.cache_latents = True
    if cfg.cache_text_encoder_outputs_to_disk:
        cfg.cache_text_encoder_outputs = True
    if cfg.min_timestep is None:
        cfg.min_timestep = 0
    if cfg.max_timestep is None:
        cfg.max_timestep = 1000
    return cfg


def cross_checks(cfg: TrainConfig) -> list[str]:
    """Problems between options that a single option's check cannot see (one line each)."""
    problems = []
    if not cfg.max_train_epochs and cfg.max_train_steps <= 0:
        problems.append(f"--max_train_steps {cfg.max_train_steps}: must be greater than 0 (or give "
                        "--max_train_epochs)")
    lo, hi = cfg.min_timestep or 0, 1000 if cfg.max_timestep is None else cfg.max_timestep
    if lo >= hi:
        problems.append(f"--min_timestep {lo}: must be below --max_timestep {hi}")
    if cfg.min_bucket_reso > cfg.max_bucket_reso:
        problems.append(f"--min_bucket_reso {cfg.min_bucket_reso}: must not exceed --max_bucket_reso "
                        f"{cfg.max_bucket_reso}")
    if cfg.enable_bucket and cfg.min_bucket_reso < cfg.bucket_reso_steps:
        problems.append(f"--min_bucket_reso {cfg.min_bucket_reso}: must be at least --bucket_reso_steps "
                        f"{cfg.bucket_reso_steps}")
    if cfg.adaptive_noise_scale is not None and cfg.noise_offset is None:
        problems.append("--adaptive_noise_scale: needs --noise_offset")
    if cfg.full_fp16 and cfg.mixed_precision != "fp16":
        problems.append("--full_fp16: needs --mixed_precision fp16")
    if cfg.full_bf16 and cfg.mixed_precision != "bf16":
        problems.append("--full_bf16: needs --mixed_precision bf16")
    if cfg.dim_from_weights and not cfg.network_weights:
        problems.append("--dim_from_weights: needs --network_weights")
    return problems

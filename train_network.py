"""Train a LoRA / LoCon network for Stable Diffusion 1.x/2.x, and SDXL (sd-scripts' command line and config files).

    python train_network.py --config_file examples/quickstart.toml
    accelerate launch --multi_gpu --num_processes 2 train_network.py --config_file my.toml
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# Before torch starts OpenMP: on a busy CPU, spinning worker threads wait on each other (measured 25x slower
# steps on a loaded 2-core machine); passive waiting costs next to nothing on an idle one. Override by setting it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from library.cli import add_verbosity, run_main, setup_logging  # noqa: E402
from library.errors import ToolkitError  # noqa: E402
from library.generate.schedulers import SAMPLERS  # noqa: E402
from library.train.argfile import parse_with_config, write_config_file  # noqa: E402

log = logging.getLogger("train_network")


# sd-scripts options this toolkit parses (so command lines and configs carry over) but does not implement:
# given a non-default value they stop the run with this reason.
UNSUPPORTED = {
    "in_json": "fine-tuning metadata datasets; use image folders with caption files",
    "face_crop_aug_range": "face-crop augmentation", "alpha_mask": "alpha-mask loss", "masked_loss": "masked loss",
    "conditioning_data_dir": "masked loss", "weighted_captions": "weighted captions",
    "fp8_base": "fp8 base weights", "fp8_base_unet": "fp8 base weights", "deepspeed": "DeepSpeed",
    "validation_split": "validation split", "huggingface_repo_id": "uploading",
    "debug_dataset": "--debug_dataset", "dataset_class": "custom dataset classes",
}
# accepted and ignored: they tune machinery this toolkit does differently
IGNORED = ("highvram", "disable_mmap_load_safetensors", "tokenizer_cache_dir", "ddp_timeout",
           "ddp_gradient_as_bucket_view", "ddp_static_graph", "torch_compile", "dynamo_backend", "log_tracker_name",
           "log_tracker_config", "log_config", "wandb_run_name", "wandb_api_key", "console_log_level",
           "console_log_file", "console_log_simple", "cpu_offload_checkpointing", "zero_stage",
           "metadata_thumbnail", "metadata_merged_from", "metadata_preprocessor", "metadata_is_negative_embedding",
           "huggingface_repo_type", "huggingface_path", "huggingface_token", "huggingface_repo_visibility",
           "save_state_to_huggingface", "resume_from_huggingface", "async_upload", "validation_seed",
           "validate_every_n_steps", "validate_every_n_epochs", "max_validation_steps")


def int_or_float(value: str) -> int | float | str:
    """sd-scripts' int_or_float: `10` -> 10, `0.1` -> 0.1, `5%` -> "5%" (a ratio)."""
    if value.endswith("%"):
        float(value[:-1])
        return value
    f = float(value)
    return int(f) if f >= 1 and f == int(f) else f


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_verbosity(p)
    g = p.add_argument_group("config")
    g.add_argument("--config_file", help="TOML of arguments (command-line options override it)")
    g.add_argument("--output_config", action="store_true", help="write the arguments to --config_file and exit")

    g = p.add_argument_group("model")
    g.add_argument("--pretrained_model_name_or_path", help=".safetensors/.ckpt checkpoint or Diffusers folder")
    g.add_argument("--v2", action="store_true", help="SD 2.x model")
    g.add_argument("--v_parameterization", action="store_true", help="v-prediction target (SD 2.x 768-v)")
    g.add_argument("--vae", help="replace the VAE (file or Diffusers folder)")
    g.add_argument("--clip_skip", type=int, help="use the output of the n-th last text-encoder layer")
    g.add_argument("--max_token_length", type=int, choices=[75, 150, 225], help="caption length in tokens")
    g.add_argument("--lowram", action="store_true", help="load the model straight to the GPU")
    g.add_argument("--highvram", action="store_true")
    g.add_argument("--disable_mmap_load_safetensors", action="store_true")
    g.add_argument("--tokenizer_cache_dir")

    g = p.add_argument_group("network")
    g.add_argument("--network_module", default="networks.lora", help="[networks.lora]")
    g.add_argument("--network_dim", type=int, help="rank (module default 4)")
    g.add_argument("--network_alpha", type=float, default=1.0, help="alpha [1]")
    g.add_argument("--network_dropout", type=float, help="dropout on the rank activations")
    g.add_argument("--network_args", nargs="*", help="key=value: conv_dim, conv_alpha, rank_dropout, ...")
    g.add_argument("--network_weights", help="start from these LoRA weights")
    g.add_argument("--dim_from_weights", action="store_true", help="take ranks from --network_weights")
    g.add_argument("--network_train_unet_only", action="store_true")
    g.add_argument("--network_train_text_encoder_only", action="store_true")
    g.add_argument("--base_weights", nargs="*", help="LoRAs merged into the model before training")
    g.add_argument("--base_weights_multiplier", nargs="*", type=float)

    g = p.add_argument_group("dataset")
    g.add_argument("--dataset_config", help="dataset TOML ([general], [[datasets]], [[datasets.subsets]])")
    g.add_argument("--train_data_dir", help="folder of '<repeats>_<name>' image folders")
    g.add_argument("--reg_data_dir", help="folder of '<repeats>_<name>' regularisation image folders")
    g.add_argument("--in_json")
    g.add_argument("--dataset_repeats", type=int, default=1)
    g.add_argument("--resolution", help="'512' or 'width,height'")
    g.add_argument("--enable_bucket", action="store_true", help="aspect-ratio buckets")
    g.add_argument("--min_bucket_reso", type=int, default=256)
    g.add_argument("--max_bucket_reso", type=int, default=1024)
    g.add_argument("--bucket_reso_steps", type=int, default=64)
    g.add_argument("--bucket_no_upscale", action="store_true")
    g.add_argument("--caption_extension", "--caption_extention", default=".caption")
    g.add_argument("--shuffle_caption", action="store_true")
    g.add_argument("--caption_separator", default=",")
    g.add_argument("--keep_tokens", type=int, default=0)
    g.add_argument("--keep_tokens_separator", default="")
    g.add_argument("--secondary_separator")
    g.add_argument("--enable_wildcard", action="store_true")
    g.add_argument("--caption_prefix")
    g.add_argument("--caption_suffix")
    g.add_argument("--caption_dropout_rate", type=float, default=0.0)
    g.add_argument("--caption_dropout_every_n_epochs", type=int, default=0)
    g.add_argument("--caption_tag_dropout_rate", type=float, default=0.0)
    g.add_argument("--token_warmup_min", type=int, default=1)
    g.add_argument("--token_warmup_step", type=float, default=0)
    g.add_argument("--color_aug", action="store_true")
    g.add_argument("--flip_aug", action="store_true")
    g.add_argument("--random_crop", action="store_true")
    g.add_argument("--face_crop_aug_range")
    g.add_argument("--resize_interpolation", choices=["lanczos", "nearest", "bilinear", "linear", "bicubic",
                                                        "cubic", "area"])
    g.add_argument("--prior_loss_weight", type=float, default=1.0)
    g.add_argument("--cache_info", action="store_true", help="keep image sizes in metadata_cache.json")
    g.add_argument("--alpha_mask", action="store_true")
    g.add_argument("--masked_loss", action="store_true")
    g.add_argument("--conditioning_data_dir")
    g.add_argument("--weighted_captions", action="store_true")
    g.add_argument("--debug_dataset", action="store_true")
    g.add_argument("--dataset_class")
    g.add_argument("--validation_split", type=float, default=0.0)
    g.add_argument("--validation_seed", type=int)
    g.add_argument("--validate_every_n_steps", type=int)
    g.add_argument("--validate_every_n_epochs", type=int)
    g.add_argument("--max_validation_steps", type=int)
    g.add_argument("--max_data_loader_n_workers", type=int, default=8)
    g.add_argument("--persistent_data_loader_workers", action="store_true")

    g = p.add_argument_group("caching")
    g.add_argument("--cache_latents", action="store_true", help="encode images once, in memory")
    g.add_argument("--cache_latents_to_disk", action="store_true", help="encode once into <image>_WxH_sd.npz")
    g.add_argument("--vae_batch_size", type=int, default=1)
    g.add_argument("--skip_cache_check", action="store_true")
    g.add_argument("--cache_text_encoder_outputs", action="store_true")
    g.add_argument("--cache_text_encoder_outputs_to_disk", action="store_true")

    g = p.add_argument_group("training")
    g.add_argument("--max_train_steps", type=int, default=1600)
    g.add_argument("--max_train_epochs", type=int, help="overrides --max_train_steps")
    g.add_argument("--train_batch_size", type=int, default=1)
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--gradient_checkpointing", action="store_true")
    g.add_argument("--seed", type=int)
    g.add_argument("--noise_offset", type=float)
    g.add_argument("--noise_offset_random_strength", action="store_true")
    g.add_argument("--adaptive_noise_scale", type=float)
    g.add_argument("--multires_noise_iterations", type=int)
    g.add_argument("--multires_noise_discount", type=float, default=0.3)
    g.add_argument("--ip_noise_gamma", type=float)
    g.add_argument("--ip_noise_gamma_random_strength", action="store_true")
    g.add_argument("--min_snr_gamma", type=float)
    g.add_argument("--scale_v_pred_loss_like_noise_pred", action="store_true")
    g.add_argument("--v_pred_like_loss", type=float)
    g.add_argument("--debiased_estimation_loss", action="store_true")
    g.add_argument("--zero_terminal_snr", action="store_true")
    g.add_argument("--min_timestep", type=int, default=0)
    g.add_argument("--max_timestep", type=int, default=1000)
    g.add_argument("--loss_type", default="l2", choices=["l1", "l2", "huber", "smooth_l1"])
    g.add_argument("--huber_schedule", default="snr", choices=["constant", "exponential", "snr"])
    g.add_argument("--huber_c", type=float, default=0.1)
    g.add_argument("--huber_scale", type=float, default=1.0)
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="0 disables clipping")
    g.add_argument("--scale_weight_norms", type=float, help="max-norm regularisation")
    g.add_argument("--initial_epoch", type=int)
    g.add_argument("--initial_step", type=int)
    g.add_argument("--skip_until_initial_step", action="store_true")

    g = p.add_argument_group("optimizer")
    g.add_argument("--optimizer_type", default="", help="AdamW (default), AdamW8bit, Lion, SGDNesterov, Adafactor, "
                   "Prodigy, DAdaptAdam, ... or package.module.Class")
    g.add_argument("--optimizer_args", nargs="*", help="key=value (Python literals; a,b is a tuple)")
    g.add_argument("--learning_rate", type=float, default=2e-6)
    g.add_argument("--unet_lr", type=float)
    g.add_argument("--text_encoder_lr", type=float, nargs="*")
    g.add_argument("--lr_scheduler", default="constant")
    g.add_argument("--lr_warmup_steps", type=int_or_float, default=0)
    g.add_argument("--lr_decay_steps", type=int_or_float, default=0)
    g.add_argument("--lr_scheduler_num_cycles", type=int, default=1)
    g.add_argument("--lr_scheduler_power", type=float, default=1.0)
    g.add_argument("--lr_scheduler_timescale", type=int)
    g.add_argument("--lr_scheduler_min_lr_ratio", type=float)
    g.add_argument("--lr_scheduler_type", default="")
    g.add_argument("--lr_scheduler_args", nargs="*")
    g.add_argument("--use_8bit_adam", action="store_true", help="legacy: --optimizer_type AdamW8bit")
    g.add_argument("--use_lion_optimizer", action="store_true", help="legacy: --optimizer_type Lion")

    g = p.add_argument_group("precision and memory")
    g.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    g.add_argument("--full_fp16", action="store_true")
    g.add_argument("--full_bf16", action="store_true")
    g.add_argument("--fp8_base", action="store_true")
    g.add_argument("--fp8_base_unet", action="store_true")
    g.add_argument("--no_half_vae", action="store_true")
    g.add_argument("--xformers", action="store_true")
    g.add_argument("--sdpa", action="store_true", help="PyTorch scaled-dot-product attention (the default)")
    g.add_argument("--mem_eff_attn", action="store_true")
    g.add_argument("--torch_compile", action="store_true")
    g.add_argument("--dynamo_backend", default="inductor")
    g.add_argument("--cpu_offload_checkpointing", action="store_true")
    g.add_argument("--ddp_timeout", type=int)
    g.add_argument("--ddp_gradient_as_bucket_view", action="store_true")
    g.add_argument("--ddp_static_graph", action="store_true")
    g.add_argument("--deepspeed", action="store_true")
    g.add_argument("--zero_stage", type=int, default=2)

    g = p.add_argument_group("saving")
    g.add_argument("--output_dir", help="where LoRA files go")
    g.add_argument("--output_name", help="file name without extension")
    g.add_argument("--save_model_as", default="safetensors", choices=["safetensors", "ckpt", "pt"])
    g.add_argument("--save_precision", choices=[None, "float", "fp16", "bf16"])
    g.add_argument("--save_every_n_epochs", type=int)
    g.add_argument("--save_every_n_steps", type=int)
    g.add_argument("--save_n_epoch_ratio", type=int)
    g.add_argument("--save_last_n_epochs", type=int)
    g.add_argument("--save_last_n_epochs_state", type=int)
    g.add_argument("--save_last_n_steps", type=int)
    g.add_argument("--save_last_n_steps_state", type=int)
    g.add_argument("--save_state", action="store_true", help="also save resumable state with each save")
    g.add_argument("--save_state_on_train_end", action="store_true")
    g.add_argument("--resume", help="state folder to continue from")
    g.add_argument("--no_metadata", action="store_true", help="only the minimum ss_* metadata")
    g.add_argument("--training_comment")
    for name in ("title", "author", "description", "license", "tags", "usage_hint", "thumbnail", "merged_from",
                 "trigger_phrase", "preprocessor"):
        g.add_argument(f"--metadata_{name}")
    g.add_argument("--metadata_is_negative_embedding", action="store_true")
    for name in ("huggingface_repo_id", "huggingface_repo_type", "huggingface_path", "huggingface_token",
                 "huggingface_repo_visibility", "resume_from_huggingface"):
        g.add_argument(f"--{name}")
    g.add_argument("--save_state_to_huggingface", action="store_true")
    g.add_argument("--async_upload", action="store_true")

    g = p.add_argument_group("sampling")
    g.add_argument("--sample_prompts", help=".txt (one prompt per line, --n --w --h --s --l --d), .toml or .json")
    g.add_argument("--sample_every_n_steps", type=int)
    g.add_argument("--sample_every_n_epochs", type=int, help="wins over --sample_every_n_steps")
    g.add_argument("--sample_at_first", action="store_true")
    g.add_argument("--sample_sampler", default="ddim", choices=SAMPLERS)

    g = p.add_argument_group("logging")
    g.add_argument("--logging_dir", help="TensorBoard logs go to <logging_dir>/<log_prefix><time>")
    g.add_argument("--log_with", choices=["tensorboard", "wandb", "all"])
    g.add_argument("--log_prefix")
    for name in ("log_tracker_name", "log_tracker_config", "wandb_run_name", "wandb_api_key", "console_log_level",
                 "console_log_file"):
        g.add_argument(f"--{name}")
    g.add_argument("--log_config", action="store_true")
    g.add_argument("--console_log_simple", action="store_true")
    return p


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Stop on options this toolkit does not implement; note ignored ones; apply legacy aliases."""
    for name, what in UNSUPPORTED.items():
        if getattr(args, name) not in (None, False, 0, 0.0, "", []):
            raise ToolkitError(f"--{name}: {what} is not supported by this toolkit")
    for name in IGNORED:
        if getattr(args, name) not in (None, False, parser.get_default(name)):
            log.info("--%s has no effect here; ignored", name)
    if args.use_8bit_adam:
        args.optimizer_type = "AdamW8bit"
    if args.use_lion_optimizer:
        args.optimizer_type = "Lion"
    if args.log_with is None and args.logging_dir:
        args.log_with = "tensorboard"
    if args.cache_latents_to_disk:
        args.cache_latents = True
    if args.cache_text_encoder_outputs_to_disk:
        args.cache_text_encoder_outputs = True


def main(argv: Sequence[str] | None = None, sdxl: bool = False) -> Path | None:
    """Parse and train; `sdxl` is sdxl_train_network.py's entry (same options, SDXL models only)."""
    parser = build_parser()
    if sdxl:
        parser.prog = "sdxl_train_network.py"
    args = parse_with_config(parser, argv)
    setup_logging(args.verbosity)
    if args.output_config:
        if not args.config_file:
            raise ToolkitError("--output_config needs --config_file (the file to write)")
        log.info("wrote %s", write_config_file(parser, args, args.config_file))
        return None
    check_options(parser, args)
    from library.train.loop import train

    return train(args, sdxl_script=sdxl)


if __name__ == "__main__":
    sys.exit(run_main(main))

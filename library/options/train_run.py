"""Declarations of the training options about the run itself: steps, objective, optimizer, precision, saving,
sampling, logging and distributed training (train_network.py and sdxl_train_network.py)."""

from __future__ import annotations

from dataclasses import dataclass

from library.options.choices import SAMPLERS
from library.options.spec import (
    between,
    flag,
    ignored,
    int_or_float,
    non_negative,
    opt,
    positive,
    refused,
    steps_or_ratio,
)

DEEPSPEED = "DeepSpeed is not supported (use accelerate's multi-process training)"
HUB = "this toolkit is offline: nothing is uploaded to or downloaded from a hub"


@dataclass
class TrainingOptions:
    GROUP = "training"
    max_train_steps: int = opt(int, 1600, "optimizer steps to train", check=non_negative, meta="ss_max_train_steps")
    max_train_epochs: int | None = opt(int, None, "epochs to train (overrides --max_train_steps; 0: use the "
                                       "steps)", check=non_negative)
    train_batch_size: int = opt(int, 1, "images per batch", check=positive, dataset_key="batch_size")
    gradient_accumulation_steps: int = opt(int, 1, "batches per optimizer step", check=positive,
                                           meta="ss_gradient_accumulation_steps")
    gradient_checkpointing: bool = flag("recompute activations in the backward pass (less memory, slower)",
                                        meta="ss_gradient_checkpointing")
    seed: int | None = opt(int, None, "random seed [random]", meta="ss_seed")
    noise_offset: float | None = opt(float, None, "noise offset (e.g. 0.05-0.1): learn darker and brighter images",
                                     check=non_negative, meta="ss_noise_offset")
    noise_offset_random_strength: bool = flag("random noise offset between 0 and --noise_offset",
                                              meta="ss_noise_offset_random_strength")
    adaptive_noise_scale: float | None = opt(float, None, "add the latent mean times this to the noise offset "
                                             "(needs --noise_offset)", meta="ss_adaptive_noise_scale")
    multires_noise_iterations: int | None = opt(int, None, "multi-resolution (pyramid) noise levels (6-10)",
                                                check=positive, meta="ss_multires_noise_iterations")
    multires_noise_discount: float = opt(float, 0.3, "weight decay of each pyramid-noise level",
                                         check=between(0, 1), meta="ss_multires_noise_discount")
    ip_noise_gamma: float | None = opt(float, None, "input-perturbation noise strength (about 0.1)",
                                       check=non_negative, meta="ss_ip_noise_gamma")
    ip_noise_gamma_random_strength: bool = flag("random input-perturbation strength between 0 and "
                                                "--ip_noise_gamma", meta="ss_ip_noise_gamma_random_strength")
    min_snr_gamma: float | None = opt(float, None, "min-SNR loss weighting gamma (5 is usual)", check=positive,
                                      meta="ss_min_snr_gamma")
    scale_v_pred_loss_like_noise_pred: bool = flag("scale the v-prediction loss like the noise-prediction loss")
    v_pred_like_loss: float | None = opt(float, None, "add a v-prediction-like loss with this weight",
                                         check=non_negative)
    debiased_estimation_loss: bool = flag("debiased-estimation loss weighting", meta="ss_debiased_estimation")
    zero_terminal_snr: bool = flag("rescale the noise schedule to zero terminal SNR", meta="ss_zero_terminal_snr")
    min_timestep: int | None = opt(int, None, "smallest timestep trained [0]", check=between(0, 1000))
    max_timestep: int | None = opt(int, None, "largest timestep trained, exclusive [1000]", check=between(1, 1000))
    loss_type: str = opt(str, "l2", "loss function", choices=("l1", "l2", "huber", "smooth_l1"),
                         meta="ss_loss_type")
    huber_schedule: str = opt(str, "snr", "how the Huber parameter changes with the timestep",
                              choices=("constant", "exponential", "snr"), meta="ss_huber_schedule")
    huber_c: float = opt(float, 0.1, "Huber loss parameter", check=positive, meta="ss_huber_c")
    huber_scale: float = opt(float, 1.0, "scale of the Huber loss parameter", check=positive, meta="ss_huber_scale")
    max_grad_norm: float = opt(float, 1.0, "clip gradients to this norm (0 disables clipping)",
                               check=non_negative, meta="ss_max_grad_norm")
    initial_epoch: int | None = opt(int, None, "start counting at this epoch (1 is the first)", check=positive)
    initial_step: int | None = opt(int, None, "start counting at this step (overrides --initial_epoch)",
                                   check=non_negative)
    skip_until_initial_step: bool = flag("skip the batches before --initial_step/--initial_epoch")


@dataclass
class OptimizerOptions:
    GROUP = "optimizer"
    optimizer_type: str = opt(str, "", "AdamW (default), AdamW8bit, Lion, SGDNesterov, Adafactor, Prodigy, "
                              "DAdaptAdam, ... or package.module.Class")
    optimizer_args: list[str] | None = opt(str, None, "optimizer settings as key=value (Python literals; a,b is a "
                                           "tuple)", nargs="*")
    learning_rate: float = opt(float, 2e-6, "learning rate (1e-4 to 1e-3 is usual for a LoRA)",
                               check=non_negative, meta="ss_learning_rate")
    unet_lr: float | None = opt(float, None, "learning rate of the U-Net modules [--learning_rate]",
                                check=non_negative, meta="ss_unet_lr")
    text_encoder_lr: list[float] | None = opt(float, None, "learning rate of the text-encoder modules "
                                              "[--learning_rate]", nargs="*", check=non_negative,
                                              meta="ss_text_encoder_lr")
    lr_scheduler: str = opt(str, "constant", "linear, cosine, cosine_with_restarts, polynomial, constant, "
                            "constant_with_warmup, adafactor, ...", meta="ss_lr_scheduler")
    lr_warmup_steps: int | float | str = opt(int_or_float, 0, "warm-up steps (or a ratio of all steps if < 1, "
                                             "or 'N%')", check=steps_or_ratio, meta="ss_lr_warmup_steps")
    lr_decay_steps: int | float | str = opt(int_or_float, 0, "decay steps of warmup_stable_decay (or a ratio, or "
                                            "'N%')", check=steps_or_ratio)
    lr_scheduler_num_cycles: int = opt(int, 1, "restarts of cosine_with_restarts", check=positive)
    lr_scheduler_power: float = opt(float, 1.0, "power of the polynomial scheduler", check=positive)
    lr_scheduler_timescale: int | None = opt(int, None, "time scale of inverse_sqrt/warmup_stable_decay",
                                             check=positive)
    lr_scheduler_min_lr_ratio: float | None = opt(float, None, "final learning rate as a ratio of the start",
                                                  check=between(0, 1))
    lr_scheduler_type: str = opt(str, "", "any scheduler class: name in torch.optim.lr_scheduler or "
                                 "package.module.Class")
    lr_scheduler_args: list[str] | None = opt(str, None, "scheduler settings as key=value", nargs="*")
    use_8bit_adam: bool = flag("old spelling of --optimizer_type AdamW8bit")
    use_lion_optimizer: bool = flag("old spelling of --optimizer_type Lion")
    fused_backward_pass: bool = flag("step the optimizer inside the backward pass (Adafactor)",
                                     **refused("the fused backward pass is not supported for LoRA training"))


@dataclass
class PrecisionOptions:
    GROUP = "precision and memory"
    mixed_precision: str = opt(str, "no", "compute in half precision: no, fp16 or bf16",
                               choices=("no", "fp16", "bf16"), meta="ss_mixed_precision")
    full_fp16: bool = flag("keep the LoRA weights in fp16 too (needs --mixed_precision fp16)", meta="ss_full_fp16")
    full_bf16: bool = flag("keep the LoRA weights in bf16 too (needs --mixed_precision bf16)")
    fp8_base: bool = flag("store the frozen U-Net and text encoders in float8_e4m3fn, computed in the "
                          "--mixed_precision dtype (about half the memory of bf16; needs mixed precision)",
                          meta="ss_fp8_base")
    fp8_base_unet: bool = flag("store only the frozen U-Net in float8_e4m3fn (text encoders stay in the "
                               "mixed-precision dtype)", meta="ss_fp8_base_unet")
    no_half_vae: bool = flag("keep the VAE in float32 under mixed precision")
    xformers: bool = flag("xformers attention (optional package, GPU only)")
    sdpa: bool = flag("PyTorch scaled-dot-product attention (the default)")
    mem_eff_attn: bool = flag("memory-efficient attention (PyTorch SDPA picks its kernel itself)")
    torch_compile: bool = flag("compile the U-Net with torch.compile (where the backend cannot work here, one "
                               "warning and the run goes on uncompiled)")
    dynamo_backend: str = opt(str, "inductor", "torch.compile backend of --torch_compile: inductor, eager, "
                              "aot_eager, cudagraphs, or any other torch._dynamo backend installed")
    cpu_offload_checkpointing: bool = flag("offload checkpointed activations to the CPU",
                                           **ignored("not used by this trainer"))
    ddp_timeout: int | None = opt(int, None, "timeout of multi-process training in minutes",
                                  **ignored("accelerate's default timeout is used"))
    ddp_gradient_as_bucket_view: bool = flag("DDP gradient bucket views",
                                             **ignored("gradients are averaged by this trainer, not by DDP"))
    ddp_static_graph: bool = flag("DDP static graph", **ignored("gradients are averaged by this trainer, not by DDP"))
    deepspeed: bool = flag("train with DeepSpeed", **refused(DEEPSPEED))
    zero_stage: int = opt(int, 2, "DeepSpeed ZeRO stage", choices=(0, 1, 2, 3), **ignored("only with --deepspeed"))
    offload_optimizer_device: str | None = opt(str, None, "DeepSpeed optimizer offload", choices=("cpu", "nvme"),
                                               **refused(DEEPSPEED))
    offload_optimizer_nvme_path: str | None = opt(str, None, "DeepSpeed optimizer offload folder",
                                                  **refused(DEEPSPEED))
    offload_param_device: str | None = opt(str, None, "DeepSpeed parameter offload", choices=("cpu", "nvme"),
                                           **refused(DEEPSPEED))
    offload_param_nvme_path: str | None = opt(str, None, "DeepSpeed parameter offload folder", **refused(DEEPSPEED))
    zero3_init_flag: bool = flag("DeepSpeed ZeRO-3 initialisation", **refused(DEEPSPEED))
    zero3_save_16bit_model: bool = flag("DeepSpeed ZeRO-3 16-bit save", **refused(DEEPSPEED))
    fp16_master_weights_and_gradients: bool = flag("DeepSpeed fp16 master weights", **refused(DEEPSPEED))


@dataclass
class SavingOptions:
    GROUP = "saving"
    output_dir: str | None = opt(str, None, "folder of the LoRA files [current folder]", metavar="PATH")
    output_name: str | None = opt(str, None, "file name without extension [last]", meta="ss_output_name")
    save_model_as: str = opt(str, "safetensors", "file format of the LoRA",
                             choices=("safetensors", "ckpt", "pt"))
    save_precision: str | None = opt(str, None, "precision of the saved weights: float, fp16 or bf16 [as "
                                     "trained]", choices=("float", "fp16", "bf16"))
    save_every_n_epochs: int | None = opt(int, None, "save a LoRA every N epochs", check=non_negative)
    save_every_n_steps: int | None = opt(int, None, "save a LoRA every N steps", check=non_negative)
    save_n_epoch_ratio: int | None = opt(int, None, "save about N LoRAs over the whole run", check=non_negative)
    save_last_n_epochs: int | None = opt(int, None, "keep only the last N per-epoch LoRAs", check=non_negative)
    save_last_n_epochs_state: int | None = opt(int, None, "keep only the last N per-epoch states",
                                               check=non_negative)
    save_last_n_steps: int | None = opt(int, None, "keep only the LoRAs of the last N steps", check=non_negative)
    save_last_n_steps_state: int | None = opt(int, None, "keep only the states of the last N steps",
                                              check=non_negative)
    save_state: bool = flag("also save a resumable state (optimizer, scheduler, position) with each LoRA")
    save_state_on_train_end: bool = flag("save a resumable state at the end of training")
    resume: str | None = opt(str, None, "state folder to continue training from", metavar="PATH")
    no_metadata: bool = flag("store only the minimum ss_* metadata in the LoRA")
    metadata_title: str | None = opt(str, None, "modelspec title [--output_name]")
    metadata_author: str | None = opt(str, None, "modelspec author")
    metadata_description: str | None = opt(str, None, "modelspec description")
    metadata_license: str | None = opt(str, None, "modelspec license")
    metadata_tags: str | None = opt(str, None, "modelspec tags (comma-separated)")
    metadata_usage_hint: str | None = opt(str, None, "modelspec usage hint")
    metadata_trigger_phrase: str | None = opt(str, None, "modelspec trigger phrase")
    metadata_thumbnail: str | None = opt(str, None, "modelspec thumbnail",
                                         **ignored("no thumbnail is stored"))
    metadata_merged_from: str | None = opt(str, None, "modelspec merged-from note",
                                           **ignored("a trained LoRA is not merged"))
    metadata_preprocessor: str | None = opt(str, None, "modelspec preprocessor", **ignored("not stored"))
    metadata_is_negative_embedding: str | None = opt(str, None, "modelspec negative-embedding flag",
                                                     **ignored("a LoRA is not an embedding"))
    huggingface_repo_id: str | None = opt(str, None, "hub repository to upload to", **refused(HUB))
    huggingface_repo_type: str | None = opt(str, None, "hub repository type", **ignored(HUB))
    huggingface_path_in_repo: str | None = opt(str, None, "path inside the hub repository", **ignored(HUB))
    huggingface_token: str | None = opt(str, None, "hub token", **ignored(HUB))
    huggingface_repo_visibility: str | None = opt(str, None, "hub repository visibility", **ignored(HUB))
    save_state_to_huggingface: bool = flag("upload states to the hub", **ignored(HUB))
    resume_from_huggingface: bool = flag("resume from a hub state", **refused(HUB))
    async_upload: bool = flag("upload in the background", **ignored(HUB))


@dataclass
class SamplingOptions:
    GROUP = "sampling"
    sample_prompts: str | None = opt(str, None, "prompts for sample images: .txt (one per line, with --n --w --h "
                                     "--s --l --d), .toml or .json", metavar="PATH")
    sample_every_n_steps: int | None = opt(int, None, "sample images every N steps", check=non_negative)
    sample_every_n_epochs: int | None = opt(int, None, "sample images every N epochs (wins over "
                                            "--sample_every_n_steps)", check=non_negative)
    sample_at_first: bool = flag("sample images before training")
    sample_sampler: str = opt(str, "ddim", "sampler of the sample images", choices=SAMPLERS)


@dataclass
class LoggingOptions:
    GROUP = "logging"
    logging_dir: str | None = opt(str, None, "TensorBoard logs go to <logging_dir>/<log_prefix><time> (and wandb's "
                                  "run folder under it)", metavar="PATH")
    log_with: str | None = opt(str, None, "tracker: tensorboard [when --logging_dir is given], wandb, or all (both); "
                               "wandb logs offline unless you are logged in", choices=("tensorboard", "wandb", "all"))
    log_prefix: str | None = opt(str, None, "prefix of the log folder's name (and of wandb's run name)")
    log_tracker_name: str | None = opt(str, None, "wandb project name [network_train]")
    log_tracker_config: str | None = opt(str, None, "TOML whose [wandb] table holds wandb.init arguments "
                                         "(entity, tags, mode...)", metavar="PATH")
    wandb_run_name: str | None = opt(str, None, "wandb run name")
    wandb_api_key: str | None = opt(str, None, "wandb API key (logs in, so the run is uploaded; never logged)")
    log_config: bool = flag("store the run's options (secrets left out) in the wandb run's config")
    console_log_level: str | None = opt(str, None, "console log level",
                                        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                                        **ignored("use -v for more detail"))
    console_log_file: str | None = opt(str, None, "also log to this file", **ignored("logs go to the console"))
    console_log_simple: bool = flag("plain console logs", **ignored("logs are always plain"))
    verbosity: int = opt(int, 0, "more log detail (-v: debug)", aliases=("-v", "--verbose_log"),
                         nargs="count", scripts=("train_network", "sdxl_train_network", "gen_img_diffusers"))

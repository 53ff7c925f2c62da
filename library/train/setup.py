"""Everything a run needs before its first step: precision, models, the LoRA network, the dataset and its
latent cache. Each function takes the run's TrainConfig (library/options) and fails early with a
message naming the option when a combination cannot work."""

from __future__ import annotations

import contextlib
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from library.data.config import datasets_from_config, datasets_from_folders
from library.data.dataset import TrainDataset
from library.data.latents import cache_latents, load_cached
from library.errors import ToolkitError
from library.models import ModelBundle, family_from_flags, load_models, load_vae_file
from library.train import guards
from library.train.distributed import Distributed

if TYPE_CHECKING:
    from library.options.train import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class Precision:
    """Mixed-precision plan: the dtype frozen weights and autocast use, and whether the LoRA is half too."""

    device: torch.device
    mixed: str
    weight_dtype: torch.dtype
    full_half: bool
    vae_dtype: torch.dtype

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.mixed == "no":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.weight_dtype)


def resolve_precision(cfg: TrainConfig, device: torch.device) -> Precision:
    mixed = (cfg.mixed_precision or "no").lower()
    if mixed not in ("no", "fp16", "bf16"):
        raise ToolkitError(f"--mixed_precision {cfg.mixed_precision!r}: use no, fp16 or bf16")
    if mixed == "fp16" and device.type == "cpu":
        raise ToolkitError("--mixed_precision fp16 needs a CUDA GPU; on CPU use --mixed_precision bf16 or no")
    if cfg.full_fp16 and mixed != "fp16":
        raise ToolkitError("--full_fp16 needs --mixed_precision fp16")
    if cfg.full_bf16 and mixed != "bf16":
        raise ToolkitError("--full_bf16 needs --mixed_precision bf16")
    weight = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed]
    vae = torch.float32 if cfg.no_half_vae or device.type == "cpu" else weight
    return Precision(device, mixed, weight, bool(cfg.full_fp16 or cfg.full_bf16), vae)


def load_training_models(cfg: TrainConfig, precision: Precision) -> ModelBundle:
    """Load the base model (SD1/SD2), swap in `--vae`, freeze everything and move it to the device."""
    if not cfg.pretrained_model_name_or_path:
        raise ToolkitError("--pretrained_model_name_or_path is required (a .safetensors/.ckpt file or a "
                           "Diffusers folder)")
    bundle = load_models(cfg.pretrained_model_name_or_path, family_from_flags(cfg.v2, False),
                         cfg.v_parameterization, torch.float32)
    if bundle.is_sdxl:
        raise ToolkitError(f"{cfg.pretrained_model_name_or_path}: an SDXL model; train_network.py trains SD1.x/"
                           "SD2.x (SDXL needs sdxl_train_network.py)")
    if bundle.is_v2 and not cfg.v2:
        log.warning("the model is SD2.x; --v2 was not given (training it as SD2.x anyway)")
    if cfg.v2 and cfg.clip_skip:
        log.warning("--clip_skip with --v2: SD2 already uses the penultimate text-encoder layer")
    merge_base_weights(cfg, bundle)
    if cfg.vae:
        vae_path = Path(cfg.vae)
        if vae_path.is_dir():
            from diffusers import AutoencoderKL

            bundle.vae = AutoencoderKL.from_pretrained(vae_path, local_files_only=True)
        else:
            bundle.vae = load_vae_file(vae_path, bundle.family)
        log.info("VAE replaced by %s", cfg.vae)
    for model in (bundle.unet, bundle.vae, *bundle.text_encoders):
        model.requires_grad_(False)
        model.eval()
    for model, dtype in ((bundle.unet, precision.weight_dtype), (bundle.vae, precision.vae_dtype),
                         *((te, precision.weight_dtype) for te in bundle.text_encoders)):
        _move(model, precision.device, dtype)
    _attention(cfg, bundle.unet)
    return bundle


def _move(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move/cast only when needed (Diffusers warns on every dtype cast, even a no-op one)."""
    param = next(model.parameters())
    if param.device != device:
        model.to(device)
    if param.dtype != dtype:
        model.to(dtype)


def _attention(cfg: TrainConfig, unet: torch.nn.Module) -> None:
    if cfg.xformers:
        try:
            unet.enable_xformers_memory_efficient_attention()
            log.info("attention: xformers")
            return
        except Exception as e:  # xformers missing or not built for this device
            log.warning("--xformers unavailable (%s); using PyTorch SDPA", str(e).splitlines()[0][:100])
    if cfg.mem_eff_attn:
        log.info("--mem_eff_attn: PyTorch SDPA picks a memory-efficient kernel itself")
    # Diffusers uses torch's scaled_dot_product_attention by default: that is --sdpa


def parse_network_args(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ToolkitError(f"--network_args {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def merge_base_weights(cfg: TrainConfig, bundle: ModelBundle) -> None:
    """`--base_weights`: bake LoRAs into the model before training (each with its multiplier)."""
    if not cfg.base_weights:
        return
    multipliers = list(cfg.base_weights_multiplier or [])
    module = importlib.import_module(cfg.network_module or "networks.lora")
    te = bundle.text_encoders[0] if len(bundle.text_encoders) == 1 else bundle.text_encoders
    for i, path in enumerate(cfg.base_weights):
        m = multipliers[i] if i < len(multipliers) else 1.0
        network, weights = module.create_network_from_weights(m, path, bundle.vae, te, bundle.unet, for_inference=True)
        network.merge_to(te, bundle.unet, weights, None, None)
        log.info("merged %s into the model (multiplier %g)", path, m)


def build_network(cfg: TrainConfig, bundle: ModelBundle):  # noqa: ANN201
    """Create the network from `--network_module` and apply it to the sides being trained."""
    if cfg.network_train_unet_only and cfg.network_train_text_encoder_only:
        raise ToolkitError("--network_train_unet_only and --network_train_text_encoder_only exclude each other")
    name = cfg.network_module or "networks.lora"
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise ToolkitError(f"--network_module {name}: cannot import it ({e})") from None
    kwargs = parse_network_args(cfg.network_args)
    if cfg.network_dropout is not None and "dropout" not in kwargs:
        kwargs["dropout"] = cfg.network_dropout
    te = bundle.text_encoders[0] if len(bundle.text_encoders) == 1 else bundle.text_encoders
    if cfg.dim_from_weights:
        if not cfg.network_weights:
            raise ToolkitError("--dim_from_weights needs --network_weights")
        network, _ = module.create_network_from_weights(1.0, cfg.network_weights, bundle.vae, te, bundle.unet,
                                                        **kwargs)
    else:
        network = module.create_network(1.0, cfg.network_dim, cfg.network_alpha, bundle.vae, te, bundle.unet,
                                        neuron_dropout=cfg.network_dropout, **kwargs)
    train_unet = not cfg.network_train_text_encoder_only
    train_te = not cfg.network_train_unet_only
    network.apply_to(te, bundle.unet, train_te, train_unet)
    if cfg.network_weights:
        guards.load_network_weights(network, cfg.network_weights)
    return network, train_unet, train_te


def dataset_configs(cfg: TrainConfig) -> list:
    """The run's datasets (TOML or DreamBooth folders), checked against what SD1/SD2 U-Nets accept."""
    cli = vars(cfg)
    if cfg.dataset_config:
        if cfg.train_data_dir or cfg.reg_data_dir:
            log.warning("--dataset_config given: --train_data_dir and --reg_data_dir are ignored")
        configs = datasets_from_config(cfg.dataset_config, cli)
    else:
        if not cfg.train_data_dir:
            raise ToolkitError("give --train_data_dir (folders named '<repeats>_<name>') or --dataset_config")
        configs = datasets_from_folders(cfg.train_data_dir, cfg.reg_data_dir, cli)
    for ds in configs:
        if ds.enable_bucket and ds.bucket_reso_steps % 64:
            log.warning("bucket_reso_steps %d is not a multiple of 64: SD1/SD2 U-Nets need sizes divisible by "
                        "64", ds.bucket_reso_steps)
        if not ds.enable_bucket and (ds.resolution[0] % 64 or ds.resolution[1] % 64):
            raise ToolkitError(f"resolution {ds.resolution[0]}x{ds.resolution[1]}: both sides must be "
                               "multiples of 64 for SD1/SD2")
    if cfg.masked_loss and not any(s.conditioning_data_dir or s.alpha_mask for ds in configs for s in ds.subsets):
        log.warning("--masked_loss: no subset has conditioning_data_dir or alpha_mask; the loss is not masked")
    return configs


def build_dataset(cfg: TrainConfig, seed: int) -> TrainDataset:
    configs = dataset_configs(cfg)
    dataset = TrainDataset(configs, seed, cfg.prior_loss_weight, cfg.cache_latents or cfg.cache_latents_to_disk)
    buckets = dataset.bucket_info()["buckets"]
    log.info("%d training images (with repeats), %d regularisation images; buckets: %s", dataset.num_train_images,
             dataset.num_reg_images, ", ".join(f"{b['resolution'][0]}x{b['resolution'][1]}:{b['count']}"
                                               for b in buckets.values()))
    return dataset


def cache_dataset_latents(cfg: TrainConfig, dataset: TrainDataset, vae: torch.nn.Module, dist: Distributed,
                          seed: int) -> None:
    """Encode every image once (memory, or `.npz` files shared by the ranks); broken images are dropped."""
    to_disk = bool(cfg.cache_latents_to_disk)
    kept = cache_latents(dataset.records, vae, cfg.vae_batch_size or 1, to_disk, cfg.skip_cache_check, seed,
                         dist.is_main, dist.rank if to_disk else 0, dist.world if to_disk else 1)
    if to_disk:
        dist.barrier()
        kept = load_cached(kept, cfg.skip_cache_check)
    dataset.drop_records(kept)
    if not any(not r.subset.is_reg for r in dataset.records):
        raise ToolkitError("no training image could be decoded")

"""Everything a run needs before its first step: precision, models, the LoRA network, the dataset and its
latent cache. Each function takes the run's TrainConfig (library/options) and fails early with a
message naming the option when a combination cannot work."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from library.data.config import datasets_from_config, datasets_from_folders, datasets_from_metadata
from library.data.dataset import TrainDataset
from library.data.latents import SDXL_SUFFIX, SUFFIX, cache_latents, load_cached
from library.errors import ToolkitError
from library.models import ModelBundle, fp8, load_models, load_unet_file, load_vae_file, peek_family
from library.models.arch import vae_scale_factor
from library.network_args import parse_network_args
from library.network_module import import_network_module
from library.train import guards, preflight
from library.train.distributed import Distributed
from library.train.text_cache import cache_text_outputs, check_cacheable, encoders_fingerprint
from library.train.text_cache import load_cached as load_cached_text

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
    unet_dtype: torch.dtype | None = None  # storage of the frozen U-Net when not weight_dtype (fp8)
    te_dtype: torch.dtype | None = None  # the same for the text encoders

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
    # as sd-scripts: the VAE in the mixed-precision dtype unless --no_half_vae (on CPU, bf16 encodes a real-shape
    # SDXL 256 px image in 1.2 s against fp32's 2.1 s)
    vae = torch.float32 if cfg.no_half_vae else weight
    precision = Precision(device, mixed, weight, bool(cfg.full_fp16 or cfg.full_bf16), vae)
    if cfg.fp8_base or cfg.fp8_base_unet:
        option = "--fp8_base" if cfg.fp8_base else "--fp8_base_unet"
        if not fp8.fp8_supported():
            raise ToolkitError(f"{option}: this torch {torch.__version__} has no float8_e4m3fn (needs torch 2.1 or "
                               "newer)")
        if mixed == "no":
            raise ToolkitError(f"{option}: fp8 weights are computed in the mixed-precision dtype: add "
                               "--mixed_precision bf16 (or fp16 on a GPU)")
        precision.unet_dtype = fp8.FP8
        precision.te_dtype = None if cfg.fp8_base_unet else fp8.FP8
        log.info("fp8 base: U-Net%s stored in float8_e4m3fn, computed in %s", "" if cfg.fp8_base_unet else
                 " and text encoders", mixed)
    return precision


def load_training_models(cfg: TrainConfig, precision: Precision, sdxl_script: bool = False) -> ModelBundle:
    """Load the base model (SD1/SD2/SDXL), swap in `--vae`, freeze everything and move it to the device.

    A single file without `--base_weights` comes without its U-Net (`bundle.unet` None): the trainer caches what
    it needs from the VAE and the text encoders, frees them, and only then calls `load_training_unet`, so the
    peak holds the U-Net or the other models, not all of them (real-shape SDXL in bf16: 1.9 GiB less)."""
    if not cfg.pretrained_model_name_or_path:
        raise ToolkitError("--pretrained_model_name_or_path is required (a .safetensors/.ckpt file or a "
                           "Diffusers folder)")
    forced = "sd2" if cfg.v2 and peek_family(cfg.pretrained_model_name_or_path) != "sdxl" else None
    # frozen parts load straight in the precision they train in (no float32 copy of the whole model first)
    # (with --base_weights the merge needs wide weights: those runs narrow to fp8 after merging)
    storage = {} if cfg.base_weights else {"unet_dtype": precision.unet_dtype, "te_dtype": precision.te_dtype}
    bundle = load_models(cfg.pretrained_model_name_or_path, forced, cfg.v_parameterization,
                         precision.weight_dtype, keep_extra=False, vae_dtype=precision.vae_dtype,
                         with_unet=bool(cfg.base_weights), **storage)
    check_family(cfg, bundle.family, sdxl_script)
    if bundle.is_sdxl and not sdxl_script:
        log.info("%s is an SDXL model: training it as SDXL (as sdxl_train_network.py does)",
                 cfg.pretrained_model_name_or_path)
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
    for model, dtype in ((bundle.vae, precision.vae_dtype), *((te, precision.te_dtype) for te in bundle.text_encoders)):
        _freeze(model, precision, dtype)
    if bundle.unet is not None:
        _freeze_unet(cfg, bundle.unet, precision)
    return bundle


def load_training_unet(cfg: TrainConfig, precision: Precision, bundle: ModelBundle) -> None:
    """The U-Net `load_training_models` left out, read from the same file in its training precision."""
    if bundle.unet is not None:
        return
    unet = load_unet_file(cfg.pretrained_model_name_or_path, bundle.family, cfg.v_parameterization,
                          precision.weight_dtype, precision.unet_dtype)
    bundle.unet = _freeze_unet(cfg, unet, precision)


def _freeze(model: torch.nn.Module, precision: Precision, dtype: torch.dtype | None) -> torch.nn.Module:
    model.requires_grad_(False)
    model.eval()
    _move(model, precision.device, dtype or precision.weight_dtype, precision.weight_dtype)
    return model


def _freeze_unet(cfg: TrainConfig, unet: torch.nn.Module, precision: Precision) -> torch.nn.Module:
    _freeze(unet, precision, precision.unet_dtype)
    _attention(cfg, unet)
    return unet


def check_family(cfg: TrainConfig, family: str | None, sdxl_script: bool) -> None:
    """Refuse what cannot be trained on this family (`family` None: not known before loading)."""
    model = cfg.pretrained_model_name_or_path
    if family == "sdxl" and cfg.v2:
        raise ToolkitError(f"--v2: {model} is an SDXL model; drop --v2")
    if sdxl_script and family not in (None, "sdxl"):
        raise ToolkitError(f"--pretrained_model_name_or_path {model}: an {family.upper()} model; "
                           "sdxl_train_network.py trains SDXL (use train_network.py)")


def _move(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, compute: torch.dtype) -> None:
    """Move/cast only when needed (Diffusers warns on every dtype cast, even a no-op one); fp8 storage narrows
    parameter by parameter, keeping norms, biases and embeddings in `compute` (library.models.fp8)."""
    param = next(model.parameters())
    if param.device != device:
        model.to(device)
    if dtype is fp8.FP8:
        if not fp8.fp8_weights(model):
            fp8.narrow_module(model, compute)
    elif param.dtype != dtype:
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


def merge_base_weights(cfg: TrainConfig, bundle: ModelBundle) -> None:
    """`--base_weights`: bake LoRAs into the model before training (each with its multiplier)."""
    if not cfg.base_weights:
        return
    multipliers = list(cfg.base_weights_multiplier or [])
    module = import_network_module(cfg.network_module)
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
    module = import_network_module(cfg.network_module)
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


def dataset_configs(cfg: TrainConfig, family: str | None = None) -> list:
    """The run's datasets (TOML or DreamBooth folders), checked against what the family's U-Net accepts."""
    cli = vars(cfg)
    if cfg.dataset_config:
        if cfg.train_data_dir or cfg.reg_data_dir or cfg.in_json:
            log.warning("--dataset_config given: --train_data_dir, --reg_data_dir and --in_json are ignored")
        configs = datasets_from_config(cfg.dataset_config, cli)
    elif cfg.in_json:
        configs = datasets_from_metadata(cfg.train_data_dir, cfg.in_json, cli)
    else:
        if not cfg.train_data_dir:
            raise ToolkitError("give --train_data_dir (folders named '<repeats>_<name>') or --dataset_config")
        configs = datasets_from_folders(cfg.train_data_dir, cfg.reg_data_dir, cli)
    step = 32 if family == "sdxl" else 64  # the U-Net halves the latents 2 (SDXL) or 3 times
    what = "SDXL" if family == "sdxl" else "SD1/SD2"
    for ds in configs:
        if ds.enable_bucket and ds.bucket_reso_steps % step:
            log.warning("bucket_reso_steps %d is not a multiple of %d: %s U-Nets need sizes divisible by %d",
                        ds.bucket_reso_steps, step, what, step)
        if ds.bucket_no_upscale and not ds.enable_bucket:
            log.warning("bucket_no_upscale has no effect without enable_bucket (every image is cropped to %dx%d)",
                        *ds.resolution)
        if not ds.enable_bucket and (ds.resolution[0] % step or ds.resolution[1] % step):
            raise ToolkitError(f"resolution {ds.resolution[0]}x{ds.resolution[1]}: both sides must be "
                               f"multiples of {step} for {what}")
    preflight.check_output_outside_images(cfg, [s.image_dir for ds in configs for s in ds.subsets if s.image_dir])
    if cfg.masked_loss and not any(s.conditioning_data_dir or s.alpha_mask for ds in configs for s in ds.subsets):
        log.warning("--masked_loss: no subset has conditioning_data_dir or alpha_mask; the loss is not masked")
    return configs


def check_weighted_captions(dataset: TrainDataset) -> None:
    """`--weighted_captions`: every caption's emphasis syntax, before any model loads (a weight of 1e9 or a typo
    would otherwise show up as a NaN loss, or silently as plain text)."""
    from library.generate.text import emphasis_problem

    for r in dataset.records:
        problem = emphasis_problem(r.caption)
        if problem:
            source = r.path.with_name(r.path.stem + r.subset.caption_extension)
            where = source if source.is_file() else f"{r.path} (caption {r.caption[:40]!r})"
            raise ToolkitError(f"{where}: position {problem[0]}: {problem[1]} (--weighted_captions reads () [] as "
                               "emphasis; write \\( \\) for literal brackets)")


def build_dataset(cfg: TrainConfig, seed: int, family: str | None = None) -> TrainDataset:
    configs = dataset_configs(cfg, family)
    dataset = TrainDataset(configs, seed, cfg.prior_loss_weight, cfg.cache_latents or cfg.cache_latents_to_disk)
    if cfg.weighted_captions:
        check_weighted_captions(dataset)
    buckets = dataset.bucket_info()["buckets"]
    log.info("%d training images (with repeats), %d regularisation images; buckets: %s", dataset.num_train_images,
             dataset.num_reg_images, ", ".join(f"{b['resolution'][0]}x{b['resolution'][1]}:{b['count']}"
                                               for b in buckets.values()))
    return dataset


def cache_dataset_latents(cfg: TrainConfig, dataset: TrainDataset, vae: torch.nn.Module, dist: Distributed,
                          seed: int, sdxl: bool = False) -> None:
    """Encode every image once (memory, or `.npz` files shared by the ranks); broken images are dropped."""
    to_disk = bool(cfg.cache_latents_to_disk)
    kept = cache_latents(dataset.records, vae, cfg.vae_batch_size or 1, to_disk, cfg.skip_cache_check, seed,
                         dist.is_main, dist.rank if to_disk else 0, dist.world if to_disk else 1,
                         SDXL_SUFFIX if sdxl else SUFFIX)
    if to_disk:
        dist.barrier()
        kept = load_cached(kept, cfg.skip_cache_check, vae_scale_factor(vae))
    dataset.drop_records(kept)
    if not any(not r.subset.is_reg for r in dataset.records):
        raise ToolkitError("no training image could be decoded")


def caches_text(cfg: TrainConfig) -> bool:
    return bool(cfg.cache_text_encoder_outputs or cfg.cache_text_encoder_outputs_to_disk)


def check_text_cache(cfg: TrainConfig, dataset: TrainDataset, family: str | None) -> None:
    """Refuse text-encoder caching where cached outputs would be wrong (decided before any model loads)."""
    if not caches_text(cfg):
        return
    option = "--cache_text_encoder_outputs" + ("_to_disk" if cfg.cache_text_encoder_outputs_to_disk else "")
    subsets = [s for cfg in dataset.configs for s in cfg.subsets]
    check_cacheable(subsets, not cfg.network_train_unet_only, option, family in (None, "sdxl"))


def cache_dataset_text(cfg: TrainConfig, dataset: TrainDataset, bundle: ModelBundle, conditioner,  # noqa: ANN001
                       dist: Distributed, precision: Precision) -> None:
    """Encode every caption once (memory, or `_te_outputs.npz` files shared by the ranks)."""
    check_text_cache(cfg, dataset, bundle.family)
    to_disk = bool(cfg.cache_text_encoder_outputs_to_disk)
    fingerprint = encoders_fingerprint(bundle.text_encoders, cfg.max_token_length)
    cache_text_outputs(dataset.records, conditioner, fingerprint, to_disk, cfg.skip_cache_check,
                       autocast=precision.autocast, rank=dist.rank if to_disk else 0,
                       world=dist.world if to_disk else 1, show_progress=dist.is_main)
    if to_disk:
        dist.barrier()
        load_cached_text(dataset.records, fingerprint, cfg.skip_cache_check)


def give_back_memory() -> None:
    """Return freed model memory to the system now: collect, trim glibc's heap (freed tensors that came from
    it stay in the process's RSS otherwise), empty the CUDA cache."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

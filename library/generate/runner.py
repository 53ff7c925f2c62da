"""gen_img_diffusers.py's work: load the model and networks, plan the images, generate and save them."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from library.data.images import to_rgb8
from library.errors import ToolkitError
from library.files import check_input_file, check_output_dir
from library.generate.networks import LoadedNetwork, check_networks, load_networks, set_multipliers
from library.generate.output import output_name, png_info, save_png
from library.generate.pipeline import BatchRunner, silence_cast_notice
from library.generate.plan import Defaults, ImageJob, batches, plan_jobs
from library.generate.text import PromptEncoder
from library.models import ModelBundle, family_from_flags, load_models
from library.options.generate import GEN_EXCLUSIVE, GenerationConfig, gen_options
from library.options.spec import GEN
from library.prompts import PromptSpec, load_prompt_file, parse_prompt_line

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def device_and_dtype(fp16: bool, bf16: bool) -> tuple[torch.device, torch.dtype]:
    """CUDA when present. fp16 on a CPU falls back to float32 with a warning (CPU half matmuls are very slow)."""
    if fp16 and bf16:
        raise ToolkitError("--fp16 and --bf16 cannot be given together")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if fp16 and device.type == "cpu":
        log.warning("--fp16 on a CPU is very slow or unsupported: using float32 (--bf16 works on CPU)")
        return device, torch.float32
    return device, torch.float16 if fp16 else torch.bfloat16 if bf16 else torch.float32


def _check(config: GenerationConfig) -> None:
    if not config.prompt and not config.from_file and not config.image_path:
        raise ToolkitError("give --prompt or --from_file (or --image_path with images made by this script)")
    from library.options.parse import check_values

    check_values(gen_options(), vars(config), GEN, GEN_EXCLUSIVE)  # the command line's checks, for library callers
    if config.network_weights and not config.network_module:
        raise ToolkitError("--network_weights needs --network_module (e.g. networks.lora)")
    if config.network_module and not config.network_weights:
        raise ToolkitError("--network_module needs --network_weights (the LoRA file)")
    if len(config.network_mul or []) > len(config.network_weights or []):
        raise ToolkitError(f"--network_mul {' '.join(map(str, config.network_mul))}: {len(config.network_mul)} "
                           f"multiplier(s) for {len(config.network_weights or [])} --network_weights file(s); give "
                           "one per file")
    for path in config.network_weights or []:
        check_input_file(path, "--network_weights")
    check_networks(config.network_module or [], config.network_weights or [], config.network_args)


def load_init_images(path: str | Path) -> list[tuple[str, Image.Image]]:
    """img2img sources: one image file, or every image in a folder (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ToolkitError(f"--image_path {path}: no images in this folder")
    elif path.is_file():
        files = [path]
    else:
        raise ToolkitError(f"--image_path {path}: not found")
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                rgb = Image.fromarray(to_rgb8(im))
                rgb.info["prompt_text"] = dict(getattr(im, "text", {}) or {})
                images.append((f.name, rgb))
        except (OSError, UnidentifiedImageError) as e:
            raise ToolkitError(f"--image_path {f}: cannot read image ({e})") from None
    return images


def prompts_from_images(images: list[tuple[str, Image.Image]],
                        images_per_prompt: int) -> tuple[list[PromptSpec], list[tuple[str, Image.Image]]]:
    """img2img without a prompt: each source's own PNG `prompt`/`negative-prompt` text, as sd-scripts does.

    Sources are repeated `images_per_prompt` times so source k feeds the images of prompt k.
    """
    specs, used = [], []
    for name, image in images:
        text = image.info.get("prompt_text", {})
        if "prompt" not in text:
            log.warning("%s has no prompt in its PNG metadata; skipped (give --prompt to use it)", name)
            continue
        specs.append(PromptSpec(text["prompt"], negative_prompt=text.get("negative-prompt")))
        used += [(name, image)] * images_per_prompt
    if not specs:
        raise ToolkitError("no --prompt given and no --image_path image carries a prompt in its PNG metadata")
    return specs, used


def prepare_model(config: GenerationConfig, device: torch.device, dtype: torch.dtype) -> ModelBundle:
    bundle = load_models(config.ckpt, family_from_flags(config.v2, config.sdxl), config.v_parameterization,
                         dtype=torch.float32)
    bundle.v_parameterization = bundle.v_parameterization or config.v_parameterization
    if config.v_parameterization and bundle.family == "sd1":
        log.warning("--v_parameterization with an SD1 model is unusual")
    silence_cast_notice()
    for model in (bundle.unet, bundle.vae, *bundle.text_encoders):
        model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    log.info("model: %s (%s, %s%s)", config.ckpt, bundle.family, str(dtype).replace("torch.", ""),
             ", v-prediction" if bundle.v_parameterization else "")
    return bundle


def prepare_networks(config: GenerationConfig, bundle: ModelBundle, device: torch.device,
                     dtype: torch.dtype) -> list[LoadedNetwork]:
    if not config.network_module:
        return []
    merge = len(config.network_weights) if config.network_merge else (config.network_merge_n_models or 0)
    return load_networks(bundle, config.network_module, config.network_weights, config.network_mul,
                         config.network_args, merge, config.network_show_meta, dtype, device)


def _prompts(config: GenerationConfig) -> list[PromptSpec]:
    specs = load_prompt_file(config.from_file) if config.from_file else [parse_prompt_line(config.prompt, "--prompt")]
    specs = [s for s in specs if s.prompt or s.negative_prompt]
    if not specs:
        raise ToolkitError(f"{config.from_file or '--prompt'}: no prompts")
    return specs


def _image_metadata(config: GenerationConfig, networks: list[LoadedNetwork]) -> dict[str, str]:
    meta = {"model": Path(config.ckpt).stem}
    if config.clip_skip:
        meta["clip-skip"] = str(config.clip_skip)
    if networks:
        meta["networks"] = ", ".join(f"{n.path.name}:{n.multiplier:g}{' (merged)' if n.merged else ''}"
                                     for n in networks)
    return meta


def generate(config: GenerationConfig) -> list[Path]:
    """Generate every planned image into config.outdir; returns the written PNG paths."""
    _check(config)
    check_output_dir(config.outdir, "--outdir")
    init_images = load_init_images(config.image_path) if config.image_path else None
    if init_images and not (config.prompt or config.from_file):
        specs, init_images = prompts_from_images(init_images, config.images_per_prompt)
    else:
        specs = _prompts(config)
    device, dtype = device_and_dtype(config.fp16, config.bf16)
    bundle = prepare_model(config, device, dtype)
    networks = prepare_networks(config, bundle, device, dtype)
    applied = [n for n in networks if not n.merged]
    defaults = Defaults(width=config.W or 512, height=config.H or 512, steps=config.steps, scale=config.scale,
                        sampler=config.sampler, strength=config.strength if config.strength is not None else 0.8,
                        negative_prompt=config.negative_prompt or "", images_per_prompt=config.images_per_prompt,
                        n_iter=config.n_iter, seed=config.seed, iter_same_seed=config.iter_same_seed,
                        size_given=config.W is not None and config.H is not None)
    jobs = plan_jobs(specs, defaults, init_images, len(applied))
    runner = BatchRunner(bundle, PromptEncoder(bundle, config.clip_skip, config.max_embeddings_multiples or 1),
                         config.xformers)
    outdir = Path(config.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    extra = _image_metadata(config, networks)
    written: list[Path] = []
    with tqdm(total=len(jobs), desc="generating", unit="img") as bar:
        def on_step(i: int, n: int) -> None:
            bar.set_postfix_str(f"step {i}/{n}")

        for batch in batches(jobs, config.batch_size):
            set_multipliers(networks, batch[0].network_muls)
            images = runner.run(batch, on_step)
            for job, image in zip(batch, images):
                written.append(_save(job, image, outdir, config, extra))
            bar.update(len(batch))
    log.info("%d images written to %s", len(written), outdir)
    return written


def _save(job: ImageJob, image: Image.Image, outdir: Path, config: GenerationConfig, extra: dict[str, str]) -> Path:
    path = outdir / output_name(job, config.sequential_file_name, config.use_original_file_name)
    save_png(image, path, png_info(job, extra))
    log.debug("saved %s (seed %d)", path, job.seed)
    return path

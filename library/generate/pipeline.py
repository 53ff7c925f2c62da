"""Diffusers pipelines assembled from a ModelBundle, and one batch of images run through them.

The prompt embeddings are computed here (library.generate.text) and passed as `prompt_embeds`, so long
prompts, clip_skip and LoRA-carrying text encoders all work with the stock Diffusers pipelines.
Every image gets its own `torch.Generator` seeded with its seed: its noise (initial latents, ancestral
sampler noise, img2img encoding) does not depend on the other images of the batch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence

import torch
from PIL import Image

from library.errors import ToolkitError
from library.generate.plan import ImageJob
from library.generate.schedulers import make_scheduler
from library.generate.text import PromptEncoder
from library.models import ModelBundle

log = logging.getLogger(__name__)


class _DropCastNotice(logging.Filter):
    """Diffusers warns on every `.to(dtype)` of a model, even with nothing to keep in float32 (diffusers 0.42)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32" not in record.getMessage()


def silence_cast_notice() -> None:
    """Install the filter once (idempotent); other Diffusers warnings still show."""
    logger = logging.getLogger("diffusers.models.modeling_utils")
    if not any(isinstance(f, _DropCastNotice) for f in logger.filters):
        logger.addFilter(_DropCastNotice())


@contextlib.contextmanager
def _quiet_imports() -> Iterator[None]:
    """Importing the pipelines makes transformers and bitsandbytes warn about optional extras we do not use."""
    import transformers

    level = transformers.utils.logging.get_verbosity()
    bnb = logging.getLogger("bitsandbytes")
    bnb_level = bnb.level
    transformers.utils.logging.set_verbosity_error()
    bnb.setLevel(logging.ERROR)
    try:
        yield
    finally:
        transformers.utils.logging.set_verbosity(level)
        bnb.setLevel(bnb_level)


def build_pipeline(bundle: ModelBundle, img2img: bool = False):  # noqa: ANN201 - a DiffusionPipeline
    """StableDiffusion(XL)(Img2Img)Pipeline sharing the bundle's modules (no copies, no safety checker)."""
    silence_cast_notice()  # the SDXL pipelines upcast the VAE with `.to(float32)` while decoding
    with _quiet_imports():
        import diffusers

        if bundle.is_sdxl:
            cls = diffusers.StableDiffusionXLImg2ImgPipeline if img2img else diffusers.StableDiffusionXLPipeline
        else:
            cls = diffusers.StableDiffusionImg2ImgPipeline if img2img else diffusers.StableDiffusionPipeline
    scheduler = make_scheduler("ddim", bundle.v_parameterization)
    if bundle.is_sdxl:
        pipe = cls(vae=bundle.vae, text_encoder=bundle.text_encoders[0], text_encoder_2=bundle.text_encoders[1],
                   tokenizer=bundle.tokenizers[0], tokenizer_2=bundle.tokenizers[1], unet=bundle.unet,
                   scheduler=scheduler, force_zeros_for_empty_prompt=False, add_watermarker=False)
    else:
        pipe = cls(vae=bundle.vae, text_encoder=bundle.text_encoders[0], tokenizer=bundle.tokenizers[0],
                   unet=bundle.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def enable_xformers(pipe, device: torch.device) -> None:  # noqa: ANN001 - a DiffusionPipeline
    """xformers memory-efficient attention; imported only when asked for (it is optional and GPU-only)."""
    if device.type != "cuda":
        raise ToolkitError("--xformers needs a CUDA GPU; on this machine drop it (PyTorch SDPA, the default, "
                           "needs nothing)")
    try:
        import xformers.ops  # noqa: F401
    except ImportError:
        raise ToolkitError("--xformers: xformers is not installed; `pip install xformers`, or drop --xformers "
                           "(PyTorch SDPA attention, the default, needs nothing)") from None
    pipe.enable_xformers_memory_efficient_attention()


class BatchRunner:
    """Runs batches of ImageJobs through the txt2img or img2img pipeline of one bundle."""

    def __init__(self, bundle: ModelBundle, encoder: PromptEncoder, xformers: bool = False) -> None:
        self.bundle = bundle
        self.encoder = encoder
        self.xformers = xformers
        self._pipes: dict[bool, object] = {}

    def pipe(self, img2img: bool):  # noqa: ANN201
        if img2img not in self._pipes:
            pipe = build_pipeline(self.bundle, img2img)
            if self.xformers:
                enable_xformers(pipe, self.bundle.unet.device)
            self._pipes[img2img] = pipe
        return self._pipes[img2img]

    def run(self, jobs: Sequence[ImageJob], on_step: Callable[[int, int], None] | None = None) -> list[Image.Image]:
        """Generate one batch (all jobs share size, steps, scale, sampler and strength)."""
        first = jobs[0]
        img2img = first.init_image is not None
        pipe = self.pipe(img2img)
        pipe.scheduler = make_scheduler(first.sampler, self.bundle.v_parameterization)
        pos, neg = self.encoder.encode([j.prompt for j in jobs], [j.negative_prompt for j in jobs])
        kwargs = dict(prompt_embeds=pos.embeds, negative_prompt_embeds=neg.embeds,
                      num_inference_steps=first.steps, guidance_scale=first.scale,
                      generator=[torch.Generator("cpu").manual_seed(j.seed) for j in jobs], output_type="pil")
        if self.bundle.is_sdxl:
            kwargs.update(pooled_prompt_embeds=pos.pooled, negative_pooled_prompt_embeds=neg.pooled)
        if on_step is not None:
            def callback(p, i, t, tensors):  # noqa: ANN001, ANN202 - diffusers callback signature
                on_step(i + 1, p.num_timesteps)
                return tensors

            kwargs["callback_on_step_end"] = callback
        if img2img:
            kwargs.update(image=[j.init_image for j in jobs], strength=first.strength)
        else:
            kwargs.update(height=first.height, width=first.width)
        return pipe(**kwargs).images

"""Sample images during training from `--sample_prompts` (.txt lines with `--n --w --h --s --l --d --ss`, or
.toml/.json), generated with Diffusers schedulers and the run's own text conditioning."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from library.errors import ToolkitError
from library.files import atomic_path
from library.generate.schedulers import canonical_sampler, make_scheduler
from library.models.arch import vae_scale_factor
from library.prompts import PromptSpec, load_prompt_file
from library.train.state import rng_state, set_rng_state

log = logging.getLogger(__name__)

@dataclass
class SamplePrompt:
    """A sample prompt with sd-scripts' training defaults filled in (512x512, 30 steps, scale 7.5)."""

    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 30
    scale: float = 7.5
    seed: int | None = None
    sampler: str | None = None


def _with_defaults(spec: PromptSpec) -> SamplePrompt:
    width, height = spec.width or 512, spec.height or 512
    return SamplePrompt(
        prompt=spec.prompt,
        negative_prompt=spec.negative_prompt or "",
        width=max(64, width - width % 8),
        height=max(64, height - height % 8),
        steps=spec.steps or 30,
        scale=spec.scale if spec.scale is not None else 7.5,
        seed=spec.seed,
        sampler=canonical_sampler(spec.sampler) if spec.sampler else None,
    )


def load_prompts(path: str | Path) -> list[SamplePrompt]:
    """`--sample_prompts` (.txt/.toml/.json, parsed by library.prompts) with training defaults applied."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"--sample_prompts {path}: file not found")
    return [_with_defaults(spec) for spec in load_prompt_file(path)]


@torch.no_grad()
def generate(unet: torch.nn.Module, vae: torch.nn.Module, conditioner, prompt: SamplePrompt,  # noqa: ANN001
             default_sampler: str, v_parameterization: bool, latent_scale: float, device: torch.device,
             dtype: torch.dtype) -> np.ndarray:
    """One image (HWC uint8) with classifier-free guidance."""
    scheduler = make_scheduler(prompt.sampler or default_sampler, v_parameterization)
    scheduler.set_timesteps(prompt.steps, device=device)
    seed = prompt.seed if prompt.seed is not None else random.randint(0, 2 ** 31)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    cond = conditioner([prompt.negative_prompt, prompt.prompt]).to(device, dtype)
    factor = vae_scale_factor(vae)
    shape = (1, 4, prompt.height // factor, prompt.width // factor)
    latents = torch.randn(shape, generator=generator).to(device, dtype) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        uncond, text = unet(x, t, cond).sample.chunk(2)
        noise = uncond + prompt.scale * (text - uncond)
        step_kwargs = {"generator": generator} if "generator" in scheduler.step.__code__.co_varnames else {}
        latents = scheduler.step(noise, t, latents, **step_kwargs).prev_sample
    param = next(vae.parameters())
    image = vae.decode(latents.to(param.device, param.dtype) / latent_scale).sample
    image = ((image[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return image


@torch.no_grad()
def generate_sdxl(pipe, conditioner, prompt: SamplePrompt, default_sampler: str,  # noqa: ANN001
                  v_parameterization: bool, device: torch.device, dtype: torch.dtype) -> np.ndarray:
    """One SDXL image (HWC uint8) from a Diffusers SDXL pipeline over the run's own parts; the prompts go
    through the run's conditioner (long captions as trained), size conditioning is the pipeline's default."""
    pipe.scheduler = make_scheduler(prompt.sampler or default_sampler, v_parameterization)
    seed = prompt.seed if prompt.seed is not None else random.randint(0, 2 ** 31)
    outs = conditioner([prompt.prompt, prompt.negative_prompt]).to(device, dtype)
    context = outs.context()
    image = pipe(prompt_embeds=context[:1], negative_prompt_embeds=context[1:], pooled_prompt_embeds=outs.pool2[:1],
                 negative_pooled_prompt_embeds=outs.pool2[1:], num_inference_steps=prompt.steps,
                 guidance_scale=prompt.scale, height=prompt.height, width=prompt.width,
                 generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def sample_images(out_dir: Path, output_name: str | None, prompts: list[SamplePrompt], unet, vae,  # noqa: ANN001
                  conditioner, default_sampler: str, v_parameterization: bool, latent_scale: float,  # noqa: ANN001
                  device: torch.device, dtype: torch.dtype, epoch: int | None = None, step: int = 0,
                  autocast=None, sdxl_pipe=None) -> list[Path]:  # noqa: ANN001
    """Write one PNG per prompt into `out_dir/sample/`; the training RNG state is left untouched. SDXL
    models sample through `sdxl_pipe` (a Diffusers pipeline built from the same parts)."""
    from PIL import Image

    saved_rng = rng_state()
    was_training = unet.training
    unet.eval()
    out = []
    stamp = time.strftime("%Y%m%d%H%M%S")
    tag = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    try:
        for i, p in enumerate(prompts):
            if p.seed is None:
                p = replace(p, seed=random.randint(0, 2 ** 31))
            with autocast() if autocast else contextlib.nullcontext():
                if sdxl_pipe is not None:
                    img = generate_sdxl(sdxl_pipe, conditioner, p, default_sampler, v_parameterization, device,
                                        dtype)
                else:
                    img = generate(unet, vae, conditioner, p, default_sampler, v_parameterization, latent_scale,
                                   device, dtype)
            name = f"{output_name + '_' if output_name else ''}{tag}_{i:02d}_{stamp}_{p.seed}.png"
            path = out_dir / "sample" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                Image.fromarray(img).save(tmp, format="PNG")
            out.append(path)
            log.info("sample image: %s", path)
    finally:
        unet.train(was_training)
        set_rng_state(saved_rng)
    return out


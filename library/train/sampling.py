"""Sample images during training from `--sample_prompts` (.txt lines with `--n --w --h --s --l --d --ss`, or
.toml/.json), generated with Diffusers schedulers and the run's own text conditioning."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import toml
import torch

from library.errors import ToolkitError
from library.train.state import rng_state, set_rng_state

log = logging.getLogger(__name__)

SAMPLERS = ("ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
            "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a")


@dataclass
class SamplePrompt:
    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 30
    scale: float = 7.5
    seed: int | None = None
    sampler: str | None = None


def parse_prompt_line(line: str) -> SamplePrompt:
    """`a cat --n blurry --w 768 --h 512 --d 42 --s 28 --l 7 --ss euler_a`."""
    pieces = line.split(" --")
    p = SamplePrompt(pieces[0].strip())
    for piece in pieces[1:]:
        key, _, value = piece.strip().partition(" ")
        key, value = key.lower(), value.strip()
        try:
            if key == "n":
                p.negative_prompt = value
            elif key == "w":
                p.width = int(value)
            elif key == "h":
                p.height = int(value)
            elif key == "d":
                p.seed = int(value)
            elif key == "s":
                p.steps = max(1, min(1000, int(value)))
            elif key == "l":
                p.scale = float(value)
            elif key == "ss":
                p.sampler = value
        except ValueError:
            raise ToolkitError(f"sample prompt {line!r}: bad value for --{key}: {value!r}") from None
    return p


def _from_dict(d: dict) -> SamplePrompt:
    p = SamplePrompt(str(d.get("prompt", "")))
    names = {"negative_prompt": "negative_prompt", "width": "width", "height": "height", "sample_steps": "steps",
             "steps": "steps", "scale": "scale", "seed": "seed", "sample_sampler": "sampler", "sampler": "sampler"}
    for k, v in d.items():
        if k in names and v is not None:
            setattr(p, names[k], v)
    return p


def load_prompts(path: str | Path) -> list[SamplePrompt]:
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"--sample_prompts {path}: file not found")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        data = toml.loads(text).get("prompt", {})
        base = {k: v for k, v in data.items() if k != "subset"}
        prompts = [_from_dict({**base, **sub}) for sub in data.get("subset", [])]
    elif suffix == ".json":
        prompts = [parse_prompt_line(x) if isinstance(x, str) else _from_dict(x) for x in json.loads(text)]
    else:
        prompts = [parse_prompt_line(ln.strip()) for ln in text.splitlines()
                   if ln.strip() and not ln.strip().startswith("#")]
    for p in prompts:
        p.width, p.height = max(64, p.width - p.width % 8), max(64, p.height - p.height % 8)
        if p.sampler and p.sampler not in SAMPLERS:
            raise ToolkitError(f"{path}: sampler {p.sampler!r}: use one of {', '.join(SAMPLERS)}")
    return prompts


def make_scheduler(name: str, v_parameterization: bool):  # noqa: ANN201
    """A Diffusers scheduler for sd-scripts' sampler name, on the SD training schedule."""
    import diffusers

    base = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="v_prediction" if v_parameterization else "epsilon")
    name = name.removeprefix("k_")
    table = {
        "ddim": (diffusers.DDIMScheduler, dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1)),
        "pndm": (diffusers.PNDMScheduler, dict(skip_prk_steps=True, steps_offset=1)),
        "lms": (diffusers.LMSDiscreteScheduler, {}),
        "euler": (diffusers.EulerDiscreteScheduler, {}),
        "euler_a": (diffusers.EulerAncestralDiscreteScheduler, {}),
        "heun": (diffusers.HeunDiscreteScheduler, {}),
        "dpm_2": (diffusers.KDPM2DiscreteScheduler, {}),
        "dpm_2_a": (diffusers.KDPM2AncestralDiscreteScheduler, {}),
        "dpmsolver": (diffusers.DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver")),
        "dpmsolver++": (diffusers.DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++")),
        "dpmsingle": (diffusers.DPMSolverSinglestepScheduler, {}),
    }
    if name not in table:
        raise ToolkitError(f"--sample_sampler {name!r}: use one of {', '.join(SAMPLERS)}")
    cls, extra = table[name]
    return cls(**base, **extra)


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
    shape = (1, 4, prompt.height // 8, prompt.width // 8)
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


def sample_images(out_dir: Path, output_name: str | None, prompts: list[SamplePrompt], unet, vae,  # noqa: ANN001
                  conditioner, default_sampler: str, v_parameterization: bool, latent_scale: float,  # noqa: ANN001
                  device: torch.device, dtype: torch.dtype, epoch: int | None = None, step: int = 0,
                  autocast=None) -> list[Path]:  # noqa: ANN001
    """Write one PNG per prompt into `out_dir/sample/`; the training RNG state is left untouched."""
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
                img = generate(unet, vae, conditioner, p, default_sampler, v_parameterization, latent_scale,
                               device, dtype)
            name = f"{output_name + '_' if output_name else ''}{tag}_{i:02d}_{stamp}_{p.seed}.png"
            path = out_dir / "sample" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
            out.append(path)
            log.info("sample image: %s", path)
    finally:
        unet.train(was_training)
        set_rng_state(saved_rng)
    return out


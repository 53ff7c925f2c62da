"""Use a kohya-format LoRA through `networks.lora` inside a stock Diffusers pipeline.

Walks through the whole API on one prompt and one seed, writing one PNG per step into --outdir:
  no_lora.png           the pipeline as loaded
  mul_<m>.png           networks.lora applied (create_network_from_weights, apply_to, load_state_dict),
                        one image per --multipliers value (set_multiplier)
  merged.png            the LoRA baked into the weights at multiplier 1 (merge_to): same image as mul_1
  diffusers_native.png  only with --compare_diffusers: Diffusers' own `load_lora_weights` on a fresh pipeline
and prints the largest pixel difference of each against the image it should equal.

  python examples/lora_in_diffusers_pipeline.py --model path/to/diffusers_folder --lora my_lora.safetensors \\
      --prompt "a photo of sks dog" --outdir lora_demo
--model may also be a single-file checkpoint (.safetensors/.ckpt); it is then loaded with
library.models.load_models and the pipeline is assembled from its parts, offline.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # import-time notice about an optional CPU kernel

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.generate.pipeline import build_pipeline  # noqa: E402
from library.generate.schedulers import SAMPLERS, make_scheduler  # noqa: E402
from library.models import load_models  # noqa: E402
from networks import lora  # noqa: E402


def load_pipeline(model: str, sampler: str):  # noqa: ANN201 - a Diffusers pipeline
    """A Diffusers folder through Diffusers itself; a single file through our offline loader."""
    if Path(model).is_dir():
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(model, local_files_only=True, safety_checker=None,
                                                 requires_safety_checker=False)
    else:
        pipe = build_pipeline(load_models(model))
    v_prediction = pipe.scheduler.config.get("prediction_type") == "v_prediction"
    pipe.scheduler = make_scheduler(sampler, v_prediction)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def text_encoders(pipe):  # noqa: ANN001, ANN201
    """What networks.lora expects: the text encoder, or the list of both for SDXL."""
    te2 = getattr(pipe, "text_encoder_2", None)
    return [pipe.text_encoder, te2] if te2 is not None else pipe.text_encoder


def generate(pipe, args: argparse.Namespace) -> np.ndarray:  # noqa: ANN001
    generator = torch.Generator("cpu").manual_seed(args.seed)
    image = pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=args.scale, width=args.size,
                 height=args.size, generator=generator).images[0]
    return np.asarray(image)


def save(array: np.ndarray, outdir: Path, name: str) -> None:
    from PIL import Image

    Image.fromarray(array).save(outdir / name)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Diffusers folder or single-file checkpoint")
    p.add_argument("--lora", required=True, help="kohya-format LoRA (.safetensors)")
    p.add_argument("--prompt", default="a red circle on a blue background")
    p.add_argument("--outdir", default="lora_demo")
    p.add_argument("--multipliers", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--scale", type=float, default=7.5)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default="euler_a", choices=SAMPLERS, help="sd-scripts sampler name [euler_a]")
    p.add_argument("--compare_diffusers", action="store_true", help="also load the LoRA with Diffusers' own loader")
    args = p.parse_args(argv)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args.model, args.sampler)
    base = generate(pipe, args)
    save(base, outdir, "no_lora.png")

    # 1. build the network from the file's shapes, wrap the layers, load the weights
    te = text_encoders(pipe)
    network, weights = lora.create_network_from_weights(1.0, args.lora, pipe.vae, te, pipe.unet, for_inference=True)
    network.apply_to(te, pipe.unet)
    network.load_state_dict(weights, strict=False)
    network.to(device=pipe.unet.device, dtype=pipe.unet.dtype)

    # 2. the multiplier can change between images without reloading anything
    diffs: dict[str, float] = {}
    images = {}
    for m in args.multipliers:
        network.set_multiplier(m)
        images[m] = generate(pipe, args)
        save(images[m], outdir, f"mul_{m:g}.png")
    if 0.0 in images:
        diffs["mul_0 vs no_lora"] = float(np.abs(images[0.0].astype(int) - base).max())

    # 3. merge: W += 1.0 * ΔW in place; the wrappers are removed, generation costs what it did without LoRA
    network.set_multiplier(1.0)
    network.merge_to(te, pipe.unet, weights, pipe.unet.dtype, pipe.unet.device)
    merged = generate(pipe, args)
    save(merged, outdir, "merged.png")
    if 1.0 in images:
        diffs["merged vs mul_1"] = float(np.abs(merged.astype(int) - images[1.0]).max())

    # 4. the same file through Diffusers' own LoRA loader (needs peft), for comparison
    if args.compare_diffusers:
        fresh = load_pipeline(args.model, args.sampler)
        fresh.load_lora_weights(args.lora)
        native = generate(fresh, args)
        save(native, outdir, "diffusers_native.png")
        if 1.0 in images:
            diffs["diffusers_native vs mul_1"] = float(np.abs(native.astype(int) - images[1.0]).max())
    for name, value in diffs.items():
        print(f"{name}: max pixel difference {value:g}")
    return diffs


if __name__ == "__main__":
    main()

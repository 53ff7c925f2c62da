"""Generate images (txt2img, img2img) from an SD1/SD2/SDXL checkpoint, optionally with LoRA networks.

Example:
  python gen_img_diffusers.py --ckpt model.safetensors --outdir out --prompt "a cat --n blurry --d 42" \\
      --steps 20 --sampler euler_a --network_module networks.lora --network_weights my_lora.safetensors
Prompt lines (--prompt or --from_file) take per-line options: --n negative, --w/--h size, --s steps,
--l CFG scale, --d seed(s), --t img2img strength, --ss sampler, --am network multipliers.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

# bitsandbytes (imported by Diffusers) warns at import time about an optional CPU kernel package
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

from library.cli import add_verbosity, run_main, setup_logging  # noqa: E402
from library.generate import SAMPLERS, GenerationConfig, generate  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_argument_group("model")
    model.add_argument("--ckpt", required=True, help="checkpoint (.safetensors/.ckpt) or Diffusers folder")
    model.add_argument("--v2", action="store_true", help="treat the model as SD2 (normally detected)")
    model.add_argument("--sdxl", action="store_true", help="treat the model as SDXL (normally detected)")
    model.add_argument("--v_parameterization", action="store_true", help="v-prediction model (SD2 768-v)")
    model.add_argument("--fp16", action="store_true", help="float16 weights (GPU; on CPU falls back to float32)")
    model.add_argument("--bf16", action="store_true", help="bfloat16 weights (GPU or CPU)")
    model.add_argument("--xformers", action="store_true", help="xformers attention (optional package, GPU only)")
    model.add_argument("--sdpa", action="store_true", help="PyTorch SDPA attention (the default)")

    prompts = p.add_argument_group("prompts and output")
    prompts.add_argument("--prompt", help="one prompt; per-line options such as --n, --d may follow")
    prompts.add_argument("--from_file", help="prompt file: .txt (one per line), .toml or .json")
    prompts.add_argument("--negative_prompt", help="negative prompt for lines without --n [empty]")
    prompts.add_argument("--outdir", default="outputs", help="output folder [outputs]")
    prompts.add_argument("--images_per_prompt", type=int, default=1, help="images per prompt [1]")
    prompts.add_argument("--n_iter", type=int, default=1, help="repeat the whole prompt list this often [1]")
    prompts.add_argument("--sequential_file_name", action="store_true", help="name images im_000001.png, ...")
    prompts.add_argument("--use_original_file_name", action="store_true",
                         help="img2img: name each image after its source image")

    sampling = p.add_argument_group("sampling")
    sampling.add_argument("--steps", type=int, default=50, help="sampling steps [50]")
    sampling.add_argument("--scale", type=float, default=7.5, help="classifier-free guidance scale [7.5]")
    sampling.add_argument("--sampler", default="ddim", type=str.lower, choices=SAMPLERS, help="sampler [ddim]")
    sampling.add_argument("--W", type=int, default=None, help="image width [512]")
    sampling.add_argument("--H", type=int, default=None, help="image height [512]")
    sampling.add_argument("--seed", type=int, default=None,
                          help="seed of a single image, or the seed of the seeds of several [random]")
    sampling.add_argument("--iter_same_seed", action="store_true",
                          help="without --seed: one random seed shared by all prompts of an iteration")
    sampling.add_argument("--batch_size", type=int, default=1, help="images per batch [1]")
    sampling.add_argument("--clip_skip", type=int, default=None, help="use the n-th text-encoder layer from the end")
    sampling.add_argument("--max_embeddings_multiples", type=int, default=None,
                          help="allow prompts of up to 75*N tokens [1]")
    sampling.add_argument("--image_path", help="img2img source image or folder of images")
    sampling.add_argument("--strength", type=float, default=None, help="img2img strength (0..1] [0.8]")

    net = p.add_argument_group("networks (LoRA)")
    net.add_argument("--network_module", nargs="*", default=[], help="network module(s), e.g. networks.lora")
    net.add_argument("--network_weights", nargs="*", default=[], help="network file(s), one per module")
    net.add_argument("--network_mul", type=float, nargs="*", default=[], help="multiplier(s) [1.0 each]")
    net.add_argument("--network_args", nargs="*", default=[],
                     help="extra arguments, one string per network: key=value;key=value")
    net.add_argument("--network_merge", action="store_true", help="merge all networks into the weights (faster)")
    net.add_argument("--network_merge_n_models", type=int, default=None, help="merge only the first N networks")
    net.add_argument("--network_show_meta", action="store_true", help="log each network file's metadata")
    add_verbosity(p)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbosity)
    fields = {f.name for f in dataclasses.fields(GenerationConfig)}
    generate(GenerationConfig(**{k: v for k, v in vars(args).items() if k in fields}))


if __name__ == "__main__":
    sys.exit(run_main(main))

"""Picture of what the quickstart LoRA learned: the same prompts and seeds from the base model and with the LoRA
(`docs/images/quickstart.png` in the README). Uses gen_img_diffusers' code (sampler, CFG, seeds)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import add_verbosity, run_main, setup_logging  # noqa: E402
from library.default_model import manifest  # noqa: E402
from library.errors import ToolkitError  # noqa: E402

log = logging.getLogger("quickstart_grid")
PROMPTS = ["sks on a blue background", "sks on a white background", "sks on a purple background",
           "a red circle on a blue background", "a yellow triangle on a black background"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", default=str(manifest.SHIPPED), help="base model [%(default)s]")
    parser.add_argument("--network_weights", default="output/quickstart.safetensors", help="LoRA [%(default)s]")
    parser.add_argument("--network_module", default="networks.lora")
    parser.add_argument("--out", default="docs/images/quickstart.png", help="picture to write [%(default)s]")
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable) [the quickstart's]")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds [%(default)s]")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scale", type=float, default=4.0, help="guidance, as the quickstart's samples [%(default)s]")
    parser.add_argument("--sampler", default="euler_a")
    parser.add_argument("--zoom", type=int, default=3, help="pixel zoom of each 64x64 image [%(default)s]")
    add_verbosity(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbosity)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ToolkitError(f"--seeds: not a comma-separated list of integers: {args.seeds!r}") from None
    if not Path(args.network_weights).exists():
        raise ToolkitError(f"{args.network_weights}: LoRA not found (train the quickstart first)")
    from library.files import atomic_path  # heavy (torch): only once the work starts
    from library.generate.grid import Variant, compose, generate_images
    from library.generate.runner import GenerationConfig

    prompts = args.prompt or PROMPTS
    base = GenerationConfig(ckpt=args.ckpt, steps=args.steps, scale=args.scale, sampler=args.sampler)
    lora = Variant(f"with LoRA ({Path(args.network_weights).name})", (args.network_module,),
                   (args.network_weights,), (1.0,))
    blocks = {f"base ({Path(args.ckpt).name})": generate_images(base, Variant("base"), prompts, seeds),
              lora.label: generate_images(base, lora, prompts, seeds)}
    out = Path(args.out)
    with atomic_path(out) as tmp:
        compose(blocks, prompts, args.zoom).save(tmp, format="PNG")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(run_main(main))

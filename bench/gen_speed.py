"""Seconds per image of gen_img_diffusers' generation path with a LoRA merged vs applied (unmerged).

Real SD1.5 shapes with seeded random weights (written once as fp16 to bench/out/, loaded as float32), CPU.
Rounds alternate "no LoRA" and "LoRA applied" on the same loaded model so a busy machine affects both alike;
then the LoRA is merged and the same images are timed again. Prints wall and CPU (process) seconds per image,
the overhead against the merged LoRA, and the peak RSS. On a shared machine use --threads 1: the CPU time is
then the compute itself, unaffected by other jobs.

  python bench/gen_speed.py                      # 256 px, 20 steps, ddim, rank 16, 3 images per setting
  python bench/gen_speed.py --size 512 --rank 32 --images 2 --threads 2
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import sys
import time
from pathlib import Path

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # import-time notice about an optional CPU kernel

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.generate.networks import load_networks  # noqa: E402
from library.generate.pipeline import BatchRunner  # noqa: E402
from library.generate.plan import ImageJob  # noqa: E402
from library.generate.text import PromptEncoder  # noqa: E402
from library.models import load_models  # noqa: E402
from library.models.factory import write_random_checkpoint  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def make_lora(bundle, path: Path, rank: int) -> Path:  # noqa: ANN001
    """A LierLa LoRA of the given rank with small random up weights (a trained LoRA's cost, not its content)."""
    from networks import lora

    te = bundle.text_encoders[0]
    network = lora.create_network(1.0, rank, rank / 2, bundle.vae, te, bundle.unet)
    network.apply_to(te, bundle.unet)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in network.named_parameters():
            if "lora_up" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    network.save_weights(path)
    network.remove_from()
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--images", type=int, default=3, help="timed images per setting (after one warm-up)")
    p.add_argument("--threads", type=int, default=None, help="torch threads [torch default]")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    OUT.mkdir(parents=True, exist_ok=True)
    ckpt = OUT / "sd15-random-fp16.safetensors"
    if not ckpt.exists():
        t = time.perf_counter()
        write_random_checkpoint(ckpt, "sd1", size="real", dtype=torch.float16)
        print(f"wrote {ckpt} in {time.perf_counter() - t:.0f} s")
    t = time.perf_counter()
    bundle = load_models(ckpt, dtype=torch.float32)
    print(f"loaded {ckpt.name} in {time.perf_counter() - t:.1f} s")
    lora_path = make_lora(bundle, OUT / f"lora-r{args.rank}.safetensors", args.rank)
    runner = BatchRunner(bundle, PromptEncoder(bundle))

    cpu: dict[str, list[float]] = {"no LoRA": [], "LoRA unmerged": [], "LoRA merged": []}

    def image(seed: int, setting: str | None = None) -> tuple[float, np.ndarray]:
        job = ImageJob(index=0, prompt="a photo of a red circle on a blue background, best quality",
                       negative_prompt="blurry", seed=seed, width=args.size, height=args.size, steps=args.steps,
                       scale=7.5, sampler=args.sampler)
        t0, c0 = time.perf_counter(), time.process_time()
        [img] = runner.run([job])
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if setting:
            cpu[setting].append(dc)
        print(f"  image seed {seed}: {dt:.1f} s wall, {dc:.1f} s CPU", flush=True)
        return dt, np.asarray(img).astype(np.int32)

    image(100)  # warm-up: first-call allocations and oneDNN primitive creation
    [net] = load_networks(bundle, ["networks.lora"], [str(lora_path)], [1.0])
    te = bundle.text_encoders[0]
    times: dict[str, list[float]] = {"no LoRA": [], "LoRA unmerged": [], "LoRA merged": []}
    unmerged_images = []
    for seed in range(args.images):
        net.network.remove_from()
        print("no LoRA", flush=True)
        times["no LoRA"].append(image(seed, "no LoRA")[0])
        net.network.apply_to(te, bundle.unet)
        print("LoRA unmerged", flush=True)
        dt, img = image(seed, "LoRA unmerged")
        times["LoRA unmerged"].append(dt)
        unmerged_images.append(img)
    net.network.remove_from()
    load_networks(bundle, ["networks.lora"], [str(lora_path)], [1.0], merge_count=1)
    diffs = []
    for seed in range(args.images):
        print("LoRA merged", flush=True)
        dt, img = image(seed, "LoRA merged")
        times["LoRA merged"].append(dt)
        diffs.append(int(np.abs(img - unmerged_images[seed]).max()))

    n_modules = len(net.network.unet_loras) + len(net.network.text_encoder_loras)
    print(f"\nSD1.5 shapes, {args.size}x{args.size}, {args.steps} steps {args.sampler}, CFG 7.5 (U-Net batch 2), "
          f"float32 CPU, torch threads {torch.get_num_threads()}, LoRA rank {args.rank} ({n_modules} modules), "
          f"load average {os.getloadavg()[0]:.1f}")
    base = statistics.median(times["LoRA merged"])
    cpu_base = statistics.median(cpu["LoRA merged"])
    print(f"{'setting':<15} {'median s/img':>12} {'min s/img':>10} {'vs merged':>10} {'CPU s/img':>10} "
          f"{'CPU vs merged':>14}")
    for name, values in times.items():
        med, cmed = statistics.median(values), statistics.median(cpu[name])
        print(f"{name:<15} {med:>12.2f} {min(values):>10.2f} {100 * (med / base - 1):>+9.1f}% {cmed:>10.2f} "
              f"{100 * (cmed / cpu_base - 1):>+13.1f}%")
    print(f"merged vs unmerged image: max pixel difference {max(diffs)}")
    print(f"peak RSS {peak_rss_gb():.1f} GB")


if __name__ == "__main__":
    main()

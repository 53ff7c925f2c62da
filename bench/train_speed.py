"""Seconds per training step and peak memory of train_network.py, next to a reference loop.

Models: the tiny test model and a real-shape SD1.5 random checkpoint (written once into bench/out/), at 256 px,
batch 1, rank 16, with and without gradient checkpointing and cached latents. Each configuration runs in its
own process so peak RSS belongs to it alone.

"reference (sd-scripts algorithm)" is a minimal loop written here from sd-scripts' documented per-step work
(VAE encode unless cached, CLIP encode, noise + timesteps, U-Net forward, MSE, backward, clip grad, AdamW step)
with the same models, LoRA modules and settings; it is not sd-scripts itself (which cannot be installed here).

    python bench/train_speed.py                      # tiny and real, all four settings
    python bench/train_speed.py --models tiny --steps 20
    python bench/train_speed.py --models real --extras   # masked loss vs plain per step; validation s/image

`--extras` (cached latents, no checkpointing): s/step with `--masked_loss` (circle masks from
`conditioning_data_dir`) next to the same run without, and the time of one validation pass per held-out image
(`--validation_split 0.25`: 2 of the 8 images, each at the 4 validation timesteps).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"


def prepare(model: str) -> tuple[Path, Path]:
    """The checkpoint and a 256 px DreamBooth folder (written once)."""
    import torch

    from library.models.factory import write_random_checkpoint
    from library.sample_data import make_sample_dataset

    OUT.mkdir(parents=True, exist_ok=True)
    ckpt = OUT / f"{model}-sd1.safetensors"
    if not ckpt.exists():
        print(f"writing {ckpt} ...", flush=True)
        write_random_checkpoint(ckpt, "sd1", "real" if model == "real" else "tiny", 0,
                                torch.float16 if model == "real" else None)
    data = OUT / "data256"
    if not (data / "img").exists():
        make_sample_dataset(data, num_images=8, resolution=256, seed=0, aspect_ratios=False)
    return ckpt, data / "img"


def common_args(ckpt: Path, img: Path, steps: int, cached: bool, ckpting: bool) -> list[str]:
    args = ["--pretrained_model_name_or_path", str(ckpt), "--train_data_dir", str(img), "--resolution", "256",
            "--train_batch_size", "1", "--network_dim", "16", "--network_alpha", "16", "--learning_rate", "1e-4",
            "--max_train_steps", str(steps), "--seed", "0", "--max_data_loader_n_workers", "0",
            "--output_dir", str(OUT / "runs"), "--output_name", "bench", "--network_train_unet_only"]
    if cached:
        args.append("--cache_latents")
    if ckpting:
        args.append("--gradient_checkpointing")
    return args


# ---- what runs inside each child process ---------------------------------------------------------------------
def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    """VmHWM: peak RSS since the last reset (or since the start)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_ours(argv: list[str]) -> dict:
    import train_network
    from library.train import loop

    stamps: list[float] = []
    cpu: list[float] = []
    original = loop.Trainer._after_step

    def timed(self, epoch):  # noqa: ANN001, ANN202
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())
        return original(self, epoch)

    loop.Trainer._after_step = timed
    original_run = loop.Trainer.run
    marks = {}

    def run(self):  # noqa: ANN001, ANN202
        marks["setup_peak"] = peak_rss_mib()  # loading, network, latent cache
        reset_peak_rss()
        return original_run(self)

    loop.Trainer.run = run
    validations: list[float] = []
    original_validate = loop.Trainer._validate

    def validate(self, *a):  # noqa: ANN001, ANN002, ANN202
        start = time.perf_counter()
        original_validate(self, *a)
        validations.append((time.perf_counter() - start) / len(self.validator.dataset.records))

    loop.Trainer._validate = validate
    train_network.main(argv)
    return {"step_times": [b - a for a, b in zip(stamps, stamps[1:])], "cpu_times": [b - a for a, b in zip(cpu, cpu[1:])],
            "train_peak_mib": peak_rss_mib(), "validation_s_per_image": validations, **marks}


def child_reference(argv: list[str]) -> dict:
    """sd-scripts' per-step algorithm, written plainly (see module docstring)."""
    import torch

    import networks.lora as lora
    from library.data.images import load_rgb, resize_and_crop, to_tensor
    from library.models import load_models
    from library.train.objective import alphas_cumprod

    a = dict(zip(argv[::2], argv[1::2]))
    cached, ckpting = "--cache_latents" in argv, "--gradient_checkpointing" in argv
    torch.manual_seed(0)
    bundle = load_models(a["--pretrained_model_name_or_path"])
    unet, vae, te, tok = bundle.unet, bundle.vae, bundle.text_encoders[0], bundle.tokenizers[0]
    for m in (unet, vae, te):
        m.requires_grad_(False)
    net = lora.create_network(1.0, 16, 16, vae, te, unet)
    net.apply_to(te, unet, apply_text_encoder=False, apply_unet=True)
    if ckpting:
        unet.enable_gradient_checkpointing()
        unet.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    folder = next(Path(a["--train_data_dir"]).iterdir())
    images = sorted(folder.glob("*.png"))
    captions = [p.with_suffix(".caption").read_text().strip() for p in images]
    pixels = [to_tensor(resize_and_crop(load_rgb(p), (256, 256), (256, 256))) for p in images]
    if cached:
        with torch.no_grad():
            latents_cache = [vae.encode(x[None]).latent_dist.sample() for x in pixels]
    ab = alphas_cumprod()
    stamps, cpu = [], []
    setup_peak = peak_rss_mib()
    reset_peak_rss()
    for step in range(int(a["--max_train_steps"])):
        i = step % len(images)
        if cached:
            latents = latents_cache[i]
        else:
            with torch.no_grad():
                latents = vae.encode(pixels[i][None]).latent_dist.sample()
        latents = latents * 0.18215
        ids = tok([captions[i]], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            cond = te(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (1,))
        s = ab[t].view(-1, 1, 1, 1)
        noisy = s.sqrt() * latents + (1 - s).sqrt() * noise
        pred = unet(noisy, t, cond).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())
    return {"step_times": [b - a for a, b in zip(stamps, stamps[1:])], "cpu_times": [b - a for a, b in zip(cpu, cpu[1:])],
            "train_peak_mib": peak_rss_mib(), "setup_peak": setup_peak}


def run_child(kind: str, argv: list[str], threads: int | None) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # what train_network.py sets; the same for both loops
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, __file__, "--child", kind, "--", *argv]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode or not line:
        raise SystemExit(f"{kind} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    return json.loads(line[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,real")
    parser.add_argument("--steps", type=int, default=0, help="steps per run [tiny 30, real 6]")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the runs (default: torch's choice)")
    parser.add_argument("--no_reference", action="store_true")
    parser.add_argument("--extras", action="store_true", help="masked loss and validation figures instead")
    parser.add_argument("--child")
    args, rest = parser.parse_known_args()
    if args.child:
        argv = rest[1:] if rest and rest[0] == "--" else rest
        result = (child_ours if args.child == "ours" else child_reference)(argv)
        # whole process: ru_maxrss would also count the parent's peak before exec, VmHWM was reset: take the max
        result["peak_rss_mib"] = max(result["setup_peak"], result["train_peak_mib"])
        print("RESULT " + json.dumps(result), flush=True)
        return
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads {args.threads or torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.extras:
        extras(args)
        return
    print("s/step: median wall time per step; cpu s/step: median CPU time per step (all threads), which a busy\n"
          "machine disturbs less; RSS peaks in MiB: setup (load, network, cache), training, whole process")
    print(f"{'model':5} {'cached':6} {'ckpt':5} {'loop':10} {'s/step':>8} {'cpu s/step':>10} {'setup peak':>11} "
          f"{'train peak':>11} {'process peak':>13}")
    for model in args.models.split(","):
        ckpt, img = prepare(model)
        steps = args.steps or (30 if model == "tiny" else 6)
        for cached in (False, True):
            for ckpting in (False, True):
                argv = common_args(ckpt, img, steps, cached, ckpting)
                kinds = ["ours"] + ([] if args.no_reference else ["reference"])
                for kind in kinds:
                    r = run_child(kind, argv, args.threads)
                    times = r["step_times"][1:] or r["step_times"]  # the first step warms caches
                    label = "ours" if kind == "ours" else "reference"
                    cpu = r["cpu_times"][1:] or r["cpu_times"]
                    print(f"{model:5} {str(cached):6} {str(ckpting):5} {label:10} {statistics.median(times):8.3f} "
                          f"{statistics.median(cpu):10.3f} {r['setup_peak']:11.0f} {r['train_peak_mib']:11.0f} "
                          f"{r['peak_rss_mib']:13.0f}", flush=True)


def extras(args: argparse.Namespace) -> None:
    """Masked loss against plain (cached latents) and one validation pass per image."""
    from library.sample_data import make_sample_masks

    print(f"{'model':5} {'run':10} {'s/step':>8} {'cpu s/step':>10} {'validation s/image':>19}")
    for model in args.models.split(","):
        ckpt, img = prepare(model)
        masks = OUT / "data256" / "mask"
        if not masks.exists():
            make_sample_masks(OUT / "data256", num_images=8, resolution=256, seed=0, aspect_ratios=False)
        steps = args.steps or (30 if model == "tiny" else 8)
        base = common_args(ckpt, img, steps, True, False)
        runs = {"plain": base, "masked": [*base, "--masked_loss", "--conditioning_data_dir", str(masks)],
                "validation": [*base, "--validation_split", "0.25", "--validation_seed", "0"]}
        for name, argv in runs.items():
            r = run_child("ours", argv, args.threads)
            times = r["step_times"][1:] or r["step_times"]
            cpu = r["cpu_times"][1:] or r["cpu_times"]
            val = f"{statistics.median(r['validation_s_per_image']):19.3f}" if r["validation_s_per_image"] else ""
            print(f"{model:5} {name:10} {statistics.median(times):8.3f} {statistics.median(cpu):10.3f} {val}",
                  flush=True)


if __name__ == "__main__":
    main()

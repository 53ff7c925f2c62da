"""Seconds per training step and peak memory (RSS by phase; VRAM on a GPU) of train_network.py / sdxl_train_network.py.

Models: the tiny test model and a real-shape SD1.5 random checkpoint (written once into bench/out/), at 256 px,
batch 1, rank 16, with and without gradient checkpointing and cached latents. `--family sdxl`: a real-shape SDXL
random checkpoint at 256 px, batch 1, rank 8, gradient checkpointing, cached latents and text-encoder outputs
(U-Net only). Each configuration runs in its own process so peak RSS belongs to it alone;
on a GPU the peak VRAM (torch.cuda.max_memory_allocated) is printed too (bench/gpu_train.sh).

Side by side with the real sd-scripts on the same files and settings: bench/vs_sd_scripts.py.

    python bench/train_speed.py                      # tiny and real, all four settings
    python bench/train_speed.py --models tiny --steps 20
    python bench/train_speed.py --family sdxl --models real --steps 4
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


def prepare_in_child(model: str, family: str = "sd1", resolution: int = 256) -> tuple[Path, Path]:
    """`prepare` run in a child process. A benchmark that measures its children's peak RSS must not build a
    checkpoint itself: on Linux a child's ru_maxrss starts from the RSS its parent had when it forked."""
    code = f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); from train_speed import prepare; " \
           f"prepare({model!r}, {family!r}, {resolution})"
    subprocess.run([sys.executable, "-c", code], check=True)
    return prepare(model, family, resolution)  # written: only the paths now


def prepare(model: str, family: str = "sd1", resolution: int = 256) -> tuple[Path, Path]:
    """The checkpoint and a DreamBooth folder at `resolution` (written once)."""
    import torch

    from library.models.factory import write_random_checkpoint
    from library.sample_data import make_sample_dataset

    OUT.mkdir(parents=True, exist_ok=True)
    ckpt = OUT / f"{model}-{family}.safetensors"
    if not ckpt.exists():
        print(f"writing {ckpt} ...", flush=True)
        write_random_checkpoint(ckpt, family, "real" if model == "real" else "tiny", 0,
                                torch.float16 if model == "real" else None)
    data = OUT / f"data{resolution}"
    if not (data / "img").exists():
        make_sample_dataset(data, num_images=8, resolution=resolution, seed=0, aspect_ratios=False)
    return ckpt, data / "img"


def common_args(ckpt: Path, img: Path, steps: int, cached: bool, ckpting: bool, family: str = "sd1",
                resolution: int = 256, rank: int | None = None, precision: str = "no") -> list[str]:
    rank = rank or (8 if family == "sdxl" else 16)
    args = ["--pretrained_model_name_or_path", str(ckpt), "--train_data_dir", str(img), "--resolution",
            str(resolution), "--train_batch_size", "1", "--network_dim", str(rank), "--network_alpha", str(rank),
            "--learning_rate", "1e-4", "--max_train_steps", str(steps), "--seed", "0", "--max_data_loader_n_workers",
            "0", "--output_dir", str(OUT / "runs"), "--output_name", "bench", "--network_train_unet_only",
            "--mixed_precision", precision, "--sdpa"]
    if cached:
        args.append("--cache_latents")
        if family == "sdxl":
            args.append("--cache_text_encoder_outputs")
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


def child_ours(argv: list[str], sdxl: bool = False) -> dict:
    import torch

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
    if sdxl:
        import sdxl_train_network

        sdxl_train_network.main(argv)
    else:
        train_network.main(argv)
    vram = torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None
    return {"step_times": [b - a for a, b in zip(stamps, stamps[1:])], "cpu_times": [b - a for a, b in zip(cpu, cpu[1:])],
            "train_peak_mib": peak_rss_mib(), "vram_peak_mib": vram, "validation_s_per_image": validations, **marks}


def run_child(kind: str, argv: list[str], threads: int | None) -> dict:
    env = dict(os.environ)
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
    parser.add_argument("--family", default="sd1", choices=["sd1", "sdxl"])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--rank", type=int, help="network_dim [sd1 16, sdxl 8]")
    parser.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--settings", default="all", choices=["all", "cached_ckpt", "cached"],
                        help="which (cached latents, gradient checkpointing) pairs to run [sdxl: cached_ckpt]")
    parser.add_argument("--extras", action="store_true", help="masked loss and validation figures instead")
    parser.add_argument("--child")
    args, rest = parser.parse_known_args()
    if args.child:
        argv = rest[1:] if rest and rest[0] == "--" else rest
        result = child_ours(argv, sdxl=args.child == "ours-sdxl")
        # whole process: ru_maxrss would also count the parent's peak before exec, VmHWM was reset: take the max
        result["peak_rss_mib"] = max(result["setup_peak"], result["train_peak_mib"])
        print("RESULT " + json.dumps(result), flush=True)
        return
    if args.extras:
        extras(args)
        return
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads {args.threads or torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("s/step: median wall time per step; cpu s/step: median CPU time per step (all threads), which a busy\n"
          "machine disturbs less; RSS peaks in MiB: setup (load, network, cache), training, whole process")
    print(f"{'model':5} {'family':6} {'cached':6} {'ckpt':5} {'loop':10} {'s/step':>8} {'cpu s/step':>10} "
          f"{'setup peak':>11} {'train peak':>11} {'process peak':>13} {'VRAM peak':>10}")
    settings = args.settings if args.settings != "all" or args.family == "sd1" else "cached_ckpt"
    pairs = {"all": [(False, False), (False, True), (True, False), (True, True)], "cached": [(True, False)],
             "cached_ckpt": [(True, True)]}[settings]
    for model in args.models.split(","):
        ckpt, img = prepare(model, args.family, args.resolution)
        steps = args.steps or (30 if model == "tiny" else 6)
        for cached, ckpting in pairs:
            argv = common_args(ckpt, img, steps, cached, ckpting, args.family, args.resolution, args.rank,
                               args.mixed_precision)
            for kind in ["ours" if args.family == "sd1" else "ours-sdxl"]:
                r = run_child(kind, argv, args.threads)
                times = r["step_times"][1:] or r["step_times"]  # the first step warms caches
                label = "ours"
                cpu = r["cpu_times"][1:] or r["cpu_times"]
                vram = f"{r['vram_peak_mib']:10.0f}" if r.get("vram_peak_mib") is not None else f"{'-':>10}"
                print(f"{model:5} {args.family:6} {str(cached):6} {str(ckpting):5} {label:10} "
                      f"{statistics.median(times):8.3f} {statistics.median(cpu):10.3f} {r['setup_peak']:11.0f} "
                      f"{r['train_peak_mib']:11.0f} {r['peak_rss_mib']:13.0f} {vram}", flush=True)


def extras(args: argparse.Namespace) -> None:
    """Masked loss against plain (cached latents) and one validation pass per image."""
    from library.sample_data import make_sample_masks

    print(f"{'model':5} {'run':10} {'s/step':>8} {'cpu s/step':>10} {'validation s/image':>19}")
    for model in args.models.split(","):
        ckpt, img = prepare(model, args.family, args.resolution)
        data = OUT / f"data{args.resolution}"
        if not (data / "mask").exists():
            make_sample_masks(data, num_images=8, resolution=args.resolution, seed=0, aspect_ratios=False)
        steps = args.steps or (30 if model == "tiny" else 8)
        base = common_args(ckpt, img, steps, True, False, args.family, args.resolution, args.rank,
                           args.mixed_precision)
        runs = {"plain": base, "masked": [*base, "--masked_loss", "--conditioning_data_dir", str(data / "mask")],
                "validation": [*base, "--validation_split", "0.25", "--validation_seed", "0"]}
        for name, argv in runs.items():
            r = run_child("ours" if args.family == "sd1" else "ours-sdxl", argv, args.threads)
            times = r["step_times"][1:] or r["step_times"]
            cpu = r["cpu_times"][1:] or r["cpu_times"]
            val = f"{statistics.median(r['validation_s_per_image']):19.3f}" if r["validation_s_per_image"] else ""
            print(f"{model:5} {name:10} {statistics.median(times):8.3f} {statistics.median(cpu):10.3f} {val}",
                  flush=True)


if __name__ == "__main__":
    main()

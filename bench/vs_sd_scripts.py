"""This toolkit's trainer side by side with the real sd-scripts, same checkpoint, images and settings, run in turn.

    bash ../shared/peers/setup_sd_scripts.sh GIT_DIR $PEERS      # sd-scripts and its own venv (see that README)
    python bench/vs_sd_scripts.py --peers $PEERS --family sd1    # real-shape SD1.5, 256 px, rank 4, 5 steps
    python bench/vs_sd_scripts.py --peers $PEERS --family sdxl   # real-shape SDXL, 256 px, rank 8, 4 steps
    python bench/vs_sd_scripts.py --peers $PEERS --family sd1 --ours_rev 181f391^   # also an earlier commit
    taskset -c 1 python bench/vs_sd_scripts.py --peers $PEERS --threads 1       # one core, one thread each
    python bench/vs_sd_scripts.py --peers $PEERS --family sdxl --precision fp8 --also_bf16 --also_peer_bf16 --runs 1
        # both with --fp8_base --mixed_precision bf16, and each once more in plain bf16
    python bench/vs_sd_scripts.py --peers $PEERS --family sd1 --rank 8 --algo loha   # LyCORIS: lokr, dora too

`--algo loha|lokr|dora` trains a LyCORIS network on both sides: sd-scripts with `--network_module lycoris.kohya`
(the lycoris-lora in its venv), this toolkit with `--network_module networks.lycoris`, the same network_args
(LoKr: factor 8; DoRA: LoCon with dora_wd and the input-axis magnitude, wd_on_output=False, on both).

Settings (the issue's): batch 1, U-Net only, fp32 (`--mixed_precision no`, CPU; `--precision bf16|fp8` for
`--mixed_precision bf16`, fp8 adding `--fp8_base`), SDPA, cached latents; SDXL adds gradient checkpointing and
cached text-encoder outputs. Models are real-shape checkpoints with random weights
(bench/out/, written once). Each run is its own process, alternating ours / sd-scripts `--runs` times;
bench/step_clock.py stamps each step from the same tqdm "steps" bar in both, and the kernel's rusage of the
finished process gives its peak RSS. Printed: median s/step (wall and CPU, first step left out), whole-process
wall time and peak RSS, median over the runs, the load average before each run and the share of CPU time the
hypervisor took from this machine during it (steal: on a shared VM, a run with high steal is slower for reasons
of its own). Before each run the checkpoint is read once into the page cache: a 20 GiB sd-scripts run evicts
it, and the next run would otherwise pay for the disk.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
CLOCK = ROOT / "bench" / "step_clock.py"

DEFAULTS = {"sd1": {"rank": 4, "steps": 5}, "sdxl": {"rank": 8, "steps": 4}}
ALGO_ARGS = {"loha": ["algo=loha"], "lokr": ["algo=lokr", "factor=8"],
             "dora": ["algo=locon", "dora_wd=True", "wd_on_output=False"]}


def with_algo(args: list[str], algo: str | None, module: str) -> list[str]:
    """The LyCORIS variant of the settings: its network module and network_args."""
    if not algo:
        return args
    args = list(args)
    args[args.index("--network_module") + 1] = module
    return args + ["--network_args", *ALGO_ARGS[algo]]


def settings(family: str, ckpt: Path, img: Path, out: Path, rank: int, steps: int, precision: str = "no"
             ) -> list[str]:
    """Options both trainers take with the same meaning."""
    args = ["--pretrained_model_name_or_path", str(ckpt), "--train_data_dir", str(img), "--resolution", "256",
            "--train_batch_size", "1", "--network_module", "networks.lora", "--network_dim", str(rank),
            "--network_alpha", str(rank), "--learning_rate", "1e-4", "--max_train_steps", str(steps), "--seed", "0",
            "--max_data_loader_n_workers", "0", "--output_dir", str(out), "--output_name", "bench",
            "--network_train_unet_only", "--mixed_precision", "no" if precision == "no" else "bf16", "--sdpa",
            "--caption_extension", ".caption", "--cache_latents", "--save_model_as", "safetensors"]
    if precision == "fp8":
        args.append("--fp8_base")
    if family == "sdxl":
        args += ["--gradient_checkpointing", "--cache_text_encoder_outputs"]
    return args


def warm(path: Path) -> None:
    """Read `path` once so that it sits in the page cache (if memory allows) for the next run, whoever ran before."""
    with open(path, "rb") as f:
        while f.read(1 << 26):
            pass


def cpu_times() -> list[int]:
    """The machine's CPU time counters (user, nice, system, idle, iowait, irq, softirq, steal) in ticks."""
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1:9]]


def run_one(python: str, script: Path, args: list[str]) -> dict:
    """One training process under the step clock: its step stamps, wall time and peak RSS (rusage of the child)."""
    with tempfile.TemporaryDirectory() as tmp:
        stamps_file, log = Path(tmp) / "stamps.json", Path(tmp) / "log.txt"
        warm(Path(args[args.index("--pretrained_model_name_or_path") + 1]))
        load, before = os.getloadavg()[0], cpu_times()
        start = time.perf_counter()
        with open(log, "w") as sink:
            proc = subprocess.Popen([python, str(CLOCK), str(stamps_file), str(script), *args], stdout=sink,
                                    stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)  # reap it here: the kernel's rusage of that process
            proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        ticks = [b - a for a, b in zip(before, cpu_times())]
        if proc.returncode or not stamps_file.exists():
            raise SystemExit(f"{script} failed (exit {proc.returncode}):\n{log.read_text()[-4000:]}")
        stamps = json.loads(stamps_file.read_text())["stamps"]  # step 1 (warm-up) has no start stamp: left out
    walls = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])]
    cpus = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])]
    return {"wall_step": statistics.median(walls), "cpu_step": statistics.median(cpus), "wall": wall,
            "peak_mib": usage.ru_maxrss / 1024, "load": load, "steps": len(stamps),
            "steal": ticks[7] / max(1, sum(ticks))}


def worktree_at(rev: str, where: Path) -> Path:
    """A detached checkout of `rev` (for 'before' figures), made once."""
    if not where.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev], check=True,
                       capture_output=True)
    return where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", required=True, type=Path, help="folder set up by setup_sd_scripts.sh")
    parser.add_argument("--family", default="sd1", choices=["sd1", "sdxl"])
    parser.add_argument("--rank", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--runs", type=int, default=2, help="runs of each trainer, alternating")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both (default: each tool's own choice)")
    parser.add_argument("--algo", choices=sorted(ALGO_ARGS), help="a LyCORIS algorithm (default: plain LoRA)")
    parser.add_argument("--ours_rev", help="also run this toolkit at this git revision (a worktree in bench/out)")
    parser.add_argument("--precision", default="no", choices=["no", "bf16", "fp8"],
                        help="no: fp32; bf16: --mixed_precision bf16; fp8: that and --fp8_base")
    parser.add_argument("--also_bf16", action="store_true", help="also run this toolkit in plain bf16 (the fp8 "
                        "memory target is under half of that)")
    parser.add_argument("--also_peer_bf16", action="store_true", help="also run sd-scripts in plain bf16 (its "
                        "--fp8_base stops on CPU: the s/step to compare an fp8 run with)")
    args = parser.parse_args()
    from train_speed import OUT, prepare_in_child

    rank = args.rank or DEFAULTS[args.family]["rank"]
    steps = args.steps or DEFAULTS[args.family]["steps"]
    ckpt, img = prepare_in_child("real", args.family, 256)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    peer = args.peers / "sd-scripts"
    tokenizers = ["--tokenizer_cache_dir", str(args.peers / "tokenizers")]
    script = "sdxl_train_network.py" if args.family == "sdxl" else "train_network.py"
    tools = {"ours": (sys.executable, ROOT / script, [], "networks.lycoris"),
             "sd-scripts": (str(args.peers / "venv" / "bin" / "python"), peer / script, tokenizers, "lycoris.kohya")}
    if args.ours_rev:
        tree = worktree_at(args.ours_rev, OUT / f"rev-{args.ours_rev.replace('^', '-parent')}")
        tools[f"ours@{args.ours_rev}"] = (sys.executable, tree / script, [], "networks.lycoris")
    precisions = {name: args.precision for name in tools}
    if args.also_bf16:
        tools["ours (bf16)"] = tools["ours"]
        precisions["ours (bf16)"] = "bf16"
    if args.also_peer_bf16:
        tools["sd-scripts (bf16)"] = tools["sd-scripts"]
        precisions["sd-scripts (bf16)"] = "bf16"
    results: dict[str, list[dict]] = {name: [] for name in tools}
    for run in range(args.runs):
        for name, (python, path, extra, module) in tools.items():
            with tempfile.TemporaryDirectory(dir=OUT) as out:
                try:
                    common = settings(args.family, ckpt, img, Path(out), rank, steps, precisions[name])
                    r = run_one(python, path, with_algo(common, args.algo, module) + extra)
                except SystemExit as e:  # one trainer failing must not lose the others' figures
                    print(f"run {run + 1} {name}: {str(e)[-3000:]}", flush=True)
                    continue
            results[name].append(r)
            print(f"run {run + 1} {name:22} {r['wall_step']:7.2f} s/step  cpu {r['cpu_step']:7.2f}  "
                  f"wall {r['wall']:7.1f} s  peak {r['peak_mib']:7.0f} MiB  (load {r['load']:.1f}, steal "
                  f"{100 * r['steal']:.0f}%)", flush=True)
    what = {"no": "fp32", "bf16": "bf16", "fp8": "fp8 base + bf16"}[args.precision]
    algo = f"LyCORIS {' '.join(ALGO_ARGS[args.algo])}, " if args.algo else ""
    print(f"\n{algo}{args.family}, real shape, 256 px, batch 1, rank {rank}, {steps} steps, {what}, U-Net only, cached latents"
          + (", gradient checkpointing, cached text-encoder outputs" if args.family == "sdxl" else "")
          + f"; medians of {args.runs} runs, {len(os.sched_getaffinity(0))} of {os.cpu_count()} CPUs, "
          + f"threads {args.threads or 'default'}")
    print(f"{'trainer':24} {'s/step':>8} {'cpu s/step':>10} {'process wall s':>15} {'peak RSS MiB':>13}")
    for name, rs in results.items():
        if not rs:
            continue
        med = {k: statistics.median(r[k] for r in rs) for k in ("wall_step", "cpu_step", "wall", "peak_mib")}
        print(f"{name:24} {med['wall_step']:8.2f} {med['cpu_step']:10.2f} {med['wall']:15.1f} {med['peak_mib']:13.0f}")


if __name__ == "__main__":
    main()

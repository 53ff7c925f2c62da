"""Wall time and peak RSS of tools/convert_diffusers20_original_sd.py on a real-shape random checkpoint.

    python bench/convert.py [--family sd1|sd2|sdxl] [--out bench/out] [--threads 2] [--lora_only]

The input (SD1.5 shapes by default, fp16, seeded random weights) is written once into bench/out (gitignored).
Each conversion runs as the script a user runs, in its own process; its peak RSS comes from wait4 (this process
never imports torch, so nothing of its own is counted), and the baseline line is a process that only imports the
same libraries, so the difference is what the conversion holds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "convert_diffusers20_original_sd.py"
IMPORTS = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import torch, diffusers, transformers, library.models"


def measure(label: str, argv: list[str], model_gib: float | None, env: dict[str, str]) -> float:
    """Run one process; print its wall time and peak RSS (and RSS in units of the model's size)."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read()
    if status != 0:
        sys.exit(f"{label} failed:\n{err[-2000:]}")
    rss = usage.ru_maxrss / 2**20
    ratio = f" ({rss / model_gib:.2f} x model)" if model_gib else ""
    print(f"{label:<44} {wall:6.1f} s   peak RSS {rss:5.2f} GiB{ratio}")
    return rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="sd1", choices=["sd1", "sd2", "sdxl"])
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    parser.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads per process [2]")
    parser.add_argument("--lora_only", action="store_true", help="only the LoRA conversion figures")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = out / f"real-{args.family}-fp16.safetensors"
    if not src.exists():  # in a child: this process stays small, so its children's peak RSS is their own
        code = (f"{IMPORTS}; from library.models.factory import write_random_checkpoint; "
                f"write_random_checkpoint({str(src)!r}, {args.family!r}, 'real', 0, torch.float16)")
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, stderr=subprocess.DEVNULL)
        print(f"wrote {src} in {time.perf_counter() - t:.0f} s")
    model_gib = src.stat().st_size / 2**30
    print(f"input: {src.name}, {model_gib:.2f} GiB (fp16), {args.threads} threads")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    py = sys.executable
    if args.lora_only:
        lora_bench(src, out, py, env)
        return
    folder, single, single32 = out / "conv-diffusers", out / "conv-back.safetensors", out / "conv-fp32.safetensors"
    for p in (folder, single, single32):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    measure("baseline (imports only)", [py, "-c", IMPORTS], model_gib, env)
    measure("single file -> Diffusers folder (fp16 kept)", [py, str(SCRIPT), str(src), str(folder)], model_gib, env)
    measure("Diffusers folder -> single file (fp16 kept)", [py, str(SCRIPT), str(folder), str(single)], model_gib, env)
    measure("single file -> single file --float", [py, str(SCRIPT), str(src), str(single32), "--float"], model_gib, env)
    print(f"fp32 output: {single32.stat().st_size / 2**30:.2f} GiB")
    for p in (folder, single, single32):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    lora_bench(src, out, py, env)


def lora_bench(src: Path, out: Path, py: str, env: dict[str, str]) -> None:
    """networks/convert_lora.py on a real-shape LoCon (rank 32, conv rank 16, fp16) of the same model."""
    lora = out / f"{src.stem}-locon32.safetensors"
    if not lora.exists():
        code = (f"{IMPORTS}; from library.random_lora import random_lora; "
                "from library.lora_io import modules_to_state_dict, save_lora; "
                f"save_lora({str(lora)!r}, modules_to_state_dict(random_lora({str(src)!r}, 32, conv_rank=16)), "
                "dtype=torch.float16)")
        subprocess.run([py, "-c", code], check=True, env=env, stderr=subprocess.DEVNULL)
    size = lora.stat().st_size / 2**30
    print(f"LoRA: {lora.name}, {size * 1024:.0f} MiB")
    tool = str(ROOT / "networks" / "convert_lora.py")
    peft, back = out / "conv-lora-peft.safetensors", out / "conv-lora-back.safetensors"
    for p in (peft, back):
        p.unlink(missing_ok=True)
    measure("LoRA kohya -> peft", [py, tool, str(lora), str(peft), "--to", "peft"], None, env)
    measure("LoRA peft -> kohya", [py, tool, str(peft), str(back), "--to", "kohya"], None, env)
    for p in (peft, back):
        p.unlink(missing_ok=True)


if __name__ == "__main__":
    main()

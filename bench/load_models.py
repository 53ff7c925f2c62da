"""Load time and peak RSS of a real-shape random checkpoint (SD1.5 or SDXL shapes), single file, fp16 on disk,
loaded into float32 models; with `--peers`, sd-scripts' own loader on the same file, alternating.

    python bench/load_models.py [--family sd1|sdxl] [--out bench/out] [--peers $PEERS] [--runs 2]

Each measurement runs in a fresh subprocess so peak RSS (ru_maxrss) belongs to that load alone. This toolkit's
loader checks every tensor for NaN/Inf while it reads; sd-scripts' does not check.
sd-scripts side: `sdxl_model_util.load_models_from_sdxl_checkpoint` (SDXL) or
`model_util.load_models_from_stable_diffusion_checkpoint` (SD1.5), run from `$PEERS/sd-scripts` with its venv.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PEER_CHILD = """
import resource, sys, time
import torch
sys.path.insert(0, '.')
family, path = sys.argv[1], sys.argv[2]
t = time.perf_counter()
if family == 'sdxl':
    from library import sdxl_model_util
    models = sdxl_model_util.load_models_from_sdxl_checkpoint('sdxl_base_v1-0', path, 'cpu', torch.float32)
    models = [m for m in models if isinstance(m, torch.nn.Module)]
else:
    from library import model_util
    models = model_util.load_models_from_stable_diffusion_checkpoint(False, path, 'cpu', torch.float32)
elapsed = time.perf_counter() - t
params = sum(p.numel() for m in models for p in m.parameters())
print(f'RESULT {elapsed:.2f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} {params}')
"""


def _child(path: str) -> None:
    sys.path.insert(0, str(ROOT))
    from library.threads import use_huge_pages

    use_huge_pages()  # as the training scripts do (THP_MEM_ALLOC_ENABLE=0 in the environment turns it off)
    import torch

    from library.models import load_models

    t = time.perf_counter()
    bundle = load_models(path, dtype=torch.float32)
    elapsed = time.perf_counter() - t
    params = sum(p.numel() for m in (bundle.unet, bundle.vae, *bundle.text_encoders) for p in m.parameters())
    print(f"RESULT {elapsed:.2f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} {params}")


def _measure(cmd: list[str], cwd: Path | None = None) -> tuple[float, float, int, float]:
    """(load seconds, peak RSS GiB, parameters, whole-process seconds) of one child."""
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if out.returncode or line is None:
        raise SystemExit(f"{cmd[:3]} failed:\n{out.stderr[-3000:]}")
    seconds, gib, params = line.split()[1:]
    return float(seconds), float(gib), int(params), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="sd1", choices=["sd1", "sd2", "sdxl"])
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    parser.add_argument("--peers", type=Path, help="folder set up by setup_sd_scripts.sh: also time sd-scripts")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return
    path = Path(args.out) / f"real-{args.family}-fp16.safetensors"
    if not path.exists():
        sys.path.insert(0, str(ROOT))
        import torch

        from library.models.factory import write_random_checkpoint

        t = time.perf_counter()
        write_random_checkpoint(path, args.family, "real", 0, torch.float16)
        print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t:.0f} s")
    sides = {"ours": ([sys.executable, __file__, "--child", str(path)], None)}
    if args.peers:
        sides["sd-scripts"] = ([str(args.peers / "venv" / "bin" / "python"), "-c", PEER_CHILD, args.family,
                                str(path)], args.peers / "sd-scripts")
    results: dict[str, list[tuple[float, float, int, float]]] = {k: [] for k in sides}
    for run in range(args.runs):
        for name, (cmd, cwd) in sides.items():
            load = os.getloadavg()[0]
            r = _measure(cmd, cwd)
            results[name].append(r)
            print(f"run {run + 1} {name:10} load {r[0]:6.1f} s  process {r[3]:6.1f} s  peak RSS {r[1]:5.2f} GiB  "
                  f"{r[2] / 1e9:.2f} B params (load average {load:.1f})", flush=True)
    print(f"\n{path.name}, float32 models, medians of {args.runs} run(s)")
    for name, rs in results.items():
        print(f"{name:10} load {statistics.median(r[0] for r in rs):6.1f} s  process "
              f"{statistics.median(r[3] for r in rs):6.1f} s  peak RSS {statistics.median(r[1] for r in rs):5.2f} GiB")


if __name__ == "__main__":
    main()

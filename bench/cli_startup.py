"""Wall time of `<script> -h` for every command-line script of the toolkit (median of N runs, default 5).

    python bench/cli_startup.py [--runs 5] [--scripts train_network.py gen_img_diffusers.py ...]

Each run is a fresh Python process (what a user waits for before the help text appears); the figure is the
median wall time in seconds. A script whose `-h` fails is reported with its exit code.

Measured on the shared 2-core machine (load 6-9), before and after the options were declared in library/options
and heavy imports moved to where the work starts: train_network.py 7.57 -> 0.29 s, gen_img_diffusers.py
6.81 -> 0.29 s, networks/merge_lora.py 3.76 -> 0.17 s, tools/make_default.py 27.7 -> 0.12 s,
tools/resize_images_to_resolution.py 5.78 -> 0.14 s; every script now under 0.25 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GLOBS = ("*.py", "networks/*.py", "tools/*.py")
NOT_SCRIPTS = {"networks/__init__.py", "networks/lora.py", "networks/dylora.py"}  # modules, not command lines


def scripts() -> list[str]:
    """Every command-line script: top-level scripts, networks/ tools and tools/."""
    out = []
    for pattern in GLOBS:
        for path in sorted(ROOT.glob(pattern)):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in NOT_SCRIPTS and "__main__" in path.read_text(encoding="utf-8"):
                out.append(rel)
    return out


def time_help(script: str, runs: int) -> tuple[float, int]:
    """Median wall seconds of `python <script> -h` over `runs` fresh processes, and the last exit code."""
    times, rc = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        rc = subprocess.run([sys.executable, str(ROOT / script), "-h"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL).returncode
        times.append(time.perf_counter() - start)
    return statistics.median(times), rc


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="runs per script; the median is reported [5]")
    p.add_argument("--scripts", nargs="*", help="scripts relative to the repository root [all of them]")
    args = p.parse_args(argv)
    print(f"{'script':45s} {'-h median (s)':>14s}")
    for script in args.scripts or scripts():
        median, rc = time_help(script, args.runs)
        note = "" if rc == 0 else f"  (exit {rc})"
        print(f"{script:45s} {median:14.2f}{note}", flush=True)


if __name__ == "__main__":
    main()

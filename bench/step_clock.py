"""Run a training script unchanged and record when each step ends: `python bench/step_clock.py OUT.json SCRIPT ARGS...`.

Both trainers (this toolkit's and sd-scripts') advance a tqdm bar named "steps" once per optimiser step, so the
clock hooks tqdm's `update` and stamps wall and CPU time there; nothing else in the script changes. Standalone
(standard library and tqdm only) so that it runs in any project's environment: the same clock for both sides.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import time


def main() -> None:
    out, script, *args = sys.argv[1:]
    stamps: list[tuple[float, float]] = []
    started = time.perf_counter()
    from tqdm import std

    original = std.tqdm.update

    def update(self, n=1):  # noqa: ANN001, ANN202
        result = original(self, n)
        if str(getattr(self, "desc", "")).startswith("steps"):
            stamps.append((time.perf_counter(), time.process_time()))
        return result

    std.tqdm.update = update

    def write() -> None:
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"start": started, "stamps": stamps}, f)

    atexit.register(write)
    script = os.path.abspath(script)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(script))
    os.chdir(os.path.dirname(script))  # sd-scripts imports its `library` relative to its folder
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()

"""The safetensors and .ckpt readers on 1,000 seeded mutations of valid files (bit flips, truncations, huge
offsets, wrong dtypes, overlapping ranges, garbage headers): every read ends in a valid state dict or a one-line
ToolkitError; never another exception, a crash, a hang, or a rise of resident memory beyond twice the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="per-read peak memory needs Linux /proc")
def test_readers_survive_1000_mutations(tmp_path) -> None:  # noqa: ANN001
    started = time.perf_counter()
    # a fixed mmap threshold makes glibc return every large block at once, so a read's peak is its own memory,
    # not what the allocator kept from earlier reads
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "fuzz_readers.py"), str(tmp_path), "1000", "12"],
                          capture_output=True, text=True, timeout=60, env=env)
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]  # a crash (signal) or an assertion in the worker
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["other"] == []
    assert result["valid"] + result["error"] == 1000
    assert result["error"] > 300 and result["valid"] > 100  # the mutations both break files and leave some readable
    assert result["max_peak_growth"] <= 2 * result["file_bytes"], result
    assert result["slowest_s"] < 5 and elapsed < 60

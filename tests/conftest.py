"""Shared fixtures: tiny seeded models of each family, written once per session."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one process per core (pytest-xdist): each computes on one thread, and so do the scripts it starts, so the
    # workers never fight over the cores (OpenMP's spin-waits make an oversubscribed core 10x slower)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


def pytest_xdist_auto_num_workers(config) -> int:  # noqa: ANN001
    """`-n auto`: one worker per core, at most 4 (tiny models; more workers only add start-up and memory)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:  # noqa: ANN001
    """Original-layout tiny checkpoints for sd1, sd2 and sdxl (seeded, a few MB each)."""
    from library.models.factory import write_random_checkpoint

    folder = tmp_path_factory.mktemp("tiny")
    return {fam: write_random_checkpoint(folder / f"tiny-{fam}.safetensors", fam) for fam in ("sd1", "sd2", "sdxl")}


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and a busy 2-core machine makes OpenMP spin: one thread for the
    modules that ask for it (`pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

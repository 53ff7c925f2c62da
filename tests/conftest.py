"""Shared fixtures: tiny seeded models of each family, written once per session."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
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


@pytest.fixture(scope="session")
def gui_server(tmp_path_factory) -> Iterator[dict]:  # noqa: ANN001
    """One `python gui.py` for every browser test of the session: {"url", "proc", "out"} (its --output_root).
    Skips, with the reason, where chromium or playwright is missing; with CI=true it must run."""
    import subprocess

    from tools.gui_browser import browser_missing, gui_server

    missing = browser_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser tests: {missing}")
        pytest.skip(missing)
    from filelock import FileLock

    (ROOT / "default").mkdir(exist_ok=True)
    with FileLock(ROOT / "default" / ".make_default.lock"):  # the other xdist worker may be writing it too
        if not (ROOT / "default" / "img" / "10_sks").is_dir():
            subprocess.run([sys.executable, "tools/make_default.py"], cwd=ROOT, check=True, capture_output=True)
    with gui_server(tmp_path_factory.mktemp("gui") / "ui") as server:
        yield server


@pytest.fixture(scope="session")
def gui_page(gui_server) -> Iterator[object]:  # noqa: ANN001
    """One chromium page on `gui_server` for the session (tests select the tab they need)."""
    from tools.gui_browser import browser_page

    with browser_page(gui_server["url"]) as page:
        yield page

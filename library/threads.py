"""How the CPU's OpenMP worker threads wait between parallel regions, set before torch loads OpenMP.

PyTorch's CPU wheels use GNU libgomp, whose threads spin up to 300,000 times before sleeping. That is fastest on
an idle machine and ruinous on a shared one: a spinning thread holds a core its partner needs. Measured on 2
cores, a real-shape SD1.5 step at 256 px (library default `GOMP_SPINCOUNT`, then 10,000, then passive waiting):
2.49 / 2.50 / 2.81 s idle, and 15.7 / 5.6 / 4.8 s with one core taken by another program. A short spin keeps
the idle speed and most of the passive policy's robustness.
"""

from __future__ import annotations

import os

SPINCOUNT = "10000"


def tune_openmp_waiting() -> None:
    """Use a short spin (GOMP_SPINCOUNT) unless the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT; call it before
    torch is imported."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", SPINCOUNT)


def use_huge_pages() -> None:
    """Back torch's large CPU tensors (2 MiB and up) with transparent huge pages (THP_MEM_ALLOC_ENABLE=1) unless
    the user set that variable; call it before torch is imported. Loading a checkpoint writes every byte of
    freshly allocated memory once, and with 4 KiB pages that is one page fault per 4 KiB: measured on 2 cores, a
    100 MiB cast into a new tensor took 460 ms with 4 KiB pages and 172 ms with huge pages."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

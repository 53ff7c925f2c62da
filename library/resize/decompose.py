"""The SVD of each LoRA layer, taken once and shared by every rank choice made from it.

`up @ down` is decomposed through QR of the two factors and an SVD of the small core
(`library.lowrank.svd_of_product`), so the full out x in matrix is never formed.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch
from tqdm import tqdm

from library.errors import ToolkitError
from library.lora_io import LoRAFactors
from library.lowrank import ProductSVD, factored_svd_of_product


@dataclass
class Decomposed:
    """`up@down = U·diag(S)·Vh` of one module (S without alpha) plus what is needed to rebuild factors.

    U and Vh stay in factored form (`ProductSVD`): only the directions a resize keeps are ever built.
    """

    name: str
    svd: ProductSVD
    scale: float  # alpha/rank of the source module
    old_rank: int
    out_features: int
    down_shape: tuple[int, ...]  # shape of one down row: (in,) or (in, kh, kw)
    up_is_4d: bool

    @property
    def s(self) -> torch.Tensor:
        """Singular values of up@down, descending, alpha NOT applied."""
        return self.svd.s

    @property
    def sigma(self) -> torch.Tensor:
        """Singular values of the applied delta ΔW = scale·up@down."""
        return self.s * self.scale

    @property
    def u(self) -> torch.Tensor:
        return self.svd.u()

    @property
    def vh(self) -> torch.Tensor:
        return self.svd.vh()

    @property
    def in_flat(self) -> int:
        return math.prod(self.down_shape)

    @property
    def full_rank(self) -> int:
        """min(out, in·kh·kw): the largest rank the layer's delta can have."""
        return min(self.out_features, self.in_flat)

    @property
    def params_per_dim(self) -> int:
        return self.out_features + self.in_flat

    def _shape(self, up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = down.shape[0]
        down = down.reshape(k, *self.down_shape)
        if self.up_is_4d:
            up = up.reshape(up.shape[0], k, 1, 1)
        return up.contiguous(), down.contiguous()

    def kohya_factors(self, k: int, generator_seed: int = 0) -> LoRAFactors:
        """sd-scripts layout for rank k: up = U·S, down = Vh, alpha = scale·k (same scale as the source).

        A k above the available directions (kohya allows "resizing" 6 -> 8) adds orthonormal down rows with
        zero up columns: the delta stays exact and the extra rows can still be trained, as in a fresh LoRA.
        """
        n = min(k, self.s.shape[0])
        up, down = self.svd.u(slice(0, n)) * self.s[:n], self.svd.vh(slice(0, n))
        if k > n:
            up = torch.cat([up, up.new_zeros(up.shape[0], k - n)], dim=1)
            down = torch.cat([down, orthonormal_complement(down, k - n, generator_seed)], dim=0)
        up, down = self._shape(up, down)
        return LoRAFactors(down, up, float(torch.tensor(self.scale, dtype=torch.float32) * k))

    def balanced_factors(self, keep: torch.Tensor, rescale: float = 1.0) -> LoRAFactors:
        """Kept directions only, magnitude split evenly: g = sqrt(σ·rescale/scale), up = U·g, down = g·Vh."""
        idx = keep.nonzero().squeeze(1)
        g = torch.sqrt(self.s[idx] * rescale)  # σ/scale = S
        up, down = self.svd.u(idx) * g, g[:, None] * self.svd.vh(idx)
        up, down = self._shape(up, down)
        return LoRAFactors(down, up, self.scale * int(keep.sum()))


def orthonormal_complement(rows: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """`count` unit rows orthogonal to the orthonormal `rows` and to each other (seeded: same output each run)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(count, rows.shape[1], generator=g, dtype=torch.float64)
    r64 = rows.double()
    for _ in range(2):  # twice for numerical orthogonality
        x = x - (x @ r64.T) @ r64
    q, _ = torch.linalg.qr(x.T)
    return q.T.to(rows.dtype)


def decompose(name: str, module: LoRAFactors, device: str | torch.device | None = None,
              source: str = "<memory>") -> Decomposed:
    """SVD of one module's up@down in float32 on `device`; results come back to the CPU."""
    dev = torch.device(device) if device else torch.device("cpu")
    up = module.up2d().to(dev, torch.float32)
    down = module.down2d().to(dev, torch.float32)
    bad = ToolkitError(f"{source}: module {name} holds NaN or infinite weights; the file is damaged")
    try:
        svd = factored_svd_of_product(up, down)
    except RuntimeError:  # LAPACK gives up on non-finite input
        raise bad from None
    if not torch.isfinite(svd.s).all():  # NaN/inf in a factor always reaches the singular values
        raise bad
    if dev.type != "cpu":
        svd = svd.to("cpu")
    return Decomposed(name, svd, module.scale, module.rank, module.up.shape[0],
                      tuple(module.down.shape[1:]), module.up.ndim == 4)


T = TypeVar("T")
R = TypeVar("R")


def worker_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def one_thread_per_op() -> Iterator[None]:
    """Intra-op threads off while Python threads run ops side by side (the per-layer matrices are small:
    OpenMP fan-out costs more than it gains, and badly so on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def parallel_map(fn: Callable[[T], R], items: Sequence[T], device: str | torch.device | None = None,
                 desc: str | None = None, unit: str = "layer") -> list[R]:
    """`[fn(x) for x in items]` in input order: one CPU thread per core with single-threaded ops, or in
    sequence on an accelerator. A progress bar shows when `desc` is given."""
    bar = tqdm(total=len(items), desc=desc, unit=unit, leave=False, disable=desc is None)
    try:
        if (device is not None and torch.device(device).type != "cpu") or len(items) < 2 or worker_count() == 1:
            out = []
            for x in items:
                out.append(fn(x))
                bar.update()
            return out
        with one_thread_per_op(), ThreadPoolExecutor(worker_count()) as pool:
            out = []
            for r in pool.map(fn, items):
                out.append(r)
                bar.update()
            return out
    finally:
        bar.close()


def decompose_all(items: Sequence[tuple[str, LoRAFactors]], device: str | torch.device | None = None,
                  source: str = "<memory>", desc: str | None = "decompose") -> list[Decomposed]:
    """`decompose` for every (name, module), in order, on all cores."""
    return parallel_map(lambda it: decompose(it[0], it[1], device, source), items, device, desc)


def is_zero(layer: Decomposed, min_sv: float = 1e-6) -> bool:
    """A layer whose delta is (numerically) zero, e.g. never trained."""
    return layer.s.numel() == 0 or float(layer.sigma[0]) < min_sv

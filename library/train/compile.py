"""`--torch_compile`: the U-Net compiled with torch.compile (`--dynamo_backend`, default inductor), in place so
LoRA hooks, state dicts and gradient checkpointing see the same module.

A backend that cannot work here (inductor without a C++ compiler on CPU or Triton on CUDA, a backend whose
package is missing) gives one warning line and the run continues uncompiled; so does a compilation that fails at
the first step. Sampling runs uncompiled: its shapes differ from training's and would only trigger recompiles.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Iterator

import torch

log = logging.getLogger(__name__)


def backend_problem(backend: str, device: torch.device) -> str | None:
    """Why `backend` cannot compile on `device`, in one phrase; None when it can."""
    import torch._dynamo

    if backend not in torch._dynamo.list_backends(exclude_tags=()):
        return f"backend {backend!r} is not available in this torch (available: " \
               f"{', '.join(sorted(torch._dynamo.list_backends()))})"
    if backend == "inductor":
        if device.type == "cuda":
            from torch.utils._triton import has_triton

            if not has_triton():
                return "inductor on CUDA needs Triton, which is not installed"
        elif not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
            return "inductor on CPU needs a C++ compiler (c++/g++/clang++), none is on PATH"
    return None


def compile_unet(unet: torch.nn.Module, backend: str, device: torch.device) -> Callable[..., object]:
    """Compile `unet` in place when `backend` can; returns what the training step calls (the U-Net, falling back
    to eager mode with one warning if compilation fails at the first call)."""
    backend = backend.lower()  # accelerate spells them in capitals (INDUCTOR)
    problem = backend_problem(backend, device)
    if problem:
        log.warning("--torch_compile: %s; training continues uncompiled", problem)
        return unet
    unet.compile(backend=backend)
    log.info("--torch_compile: U-Net compiled with %s (the first step compiles it)", backend)

    def call(*args: object, **kwargs: object) -> object:
        if getattr(unet, "_compiled_call_impl", None) is None:
            return unet(*args, **kwargs)
        try:
            return unet(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - dynamo/inductor raise many types; the eager model still works
            if not _is_compile_error(e):
                raise
            inner = getattr(e, "inner_exception", None) or e.__cause__ or e
            first = f"{type(inner).__name__}: {(str(inner).strip().splitlines() or [''])[0][:160]}"
            log.warning("--torch_compile: compiling the U-Net with %s failed (%s); training continues uncompiled",
                        backend, first)
            unet._compiled_call_impl = None
            return unet(*args, **kwargs)

    return call


def _is_compile_error(e: BaseException) -> bool:
    import torch._dynamo.exc

    module = type(e).__module__ or ""
    return isinstance(e, torch._dynamo.exc.TorchDynamoException) or module.startswith(("torch._dynamo",
                                                                                      "torch._inductor"))


@contextlib.contextmanager
def uncompiled(unet: torch.nn.Module) -> Iterator[None]:
    """Run `unet` eagerly inside the block (sampling), compiled again after it."""
    saved = getattr(unet, "_compiled_call_impl", None)
    unet._compiled_call_impl = None
    try:
        yield
    finally:
        unet._compiled_call_impl = saved

"""Checks that stop a training run early and clearly instead of wasting it or saving wrong numbers:
`--network_weights` that do not fit, a loss that is no longer finite, and LoRA saves that are atomic with the
usual file permissions whatever network module writes them."""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path

import torch

from library.errors import ToolkitError
from library.files import atomic_path, load_state_dict

log = logging.getLogger(__name__)


def save_network(network: torch.nn.Module, path: Path, dtype: torch.dtype | None, metadata: dict[str, str]) -> Path:
    """`network.save_weights` into a temporary file renamed into place: a third-party module's writer (which
    may write in place, or make the file 0600) can neither leave a half-written file nor odd permissions."""
    with atomic_path(path) as tmp:
        network.save_weights(str(tmp), dtype, metadata)
    return path


def check_loss(loss: torch.Tensor, step: int, last_saved: Path | None,
               inputs: tuple[torch.Tensor, object, list[str]] | None = None) -> None:
    """Stop at the first non-finite loss (sd-scripts trains on, and saves NaN weights): one line with the step,
    and the likely cause when the batch's `inputs` (latents, text conditioning, captions) show it."""
    value = float(loss.detach())
    if math.isfinite(value):
        return
    kept = f"the last good save, {last_saved}, is kept" if last_saved else "nothing was saved by this run"
    cause = likely_cause(*inputs) if inputs is not None else None
    hint = (f"Likely cause: {cause}" if cause else "Lower the learning rate, check --network_weights and the images, "
            "or use --mixed_precision no")
    raise ToolkitError(f"step {step}: the loss is {value}; training stopped ({kept}). {hint}")


def _finite(x: object) -> bool:
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x.detach().float()).all())
    parts = x if isinstance(x, (list, tuple)) else list(vars(x).values()) if hasattr(x, "__dict__") else []
    return all(_finite(p) for p in parts if isinstance(p, torch.Tensor) or hasattr(p, "__dict__"))


def likely_cause(latents: torch.Tensor, cond: object, captions: list[str]) -> str | None:
    """What in a batch explains a non-finite loss: its latents (a damaged image or latent cache) or its text
    conditioning (a caption weight, a text-encoder cache); None when both are finite (the weights diverged)."""
    if not _finite(latents):
        return ("the batch's latents hold NaN or Inf (a damaged image or cached latent .npz: delete the batch's "
                ".npz files to encode them again)")
    if not _finite(cond):
        shown = "; ".join(repr(c[:60]) for c in captions[:2])
        return (f"the text conditioning of the captions {shown} holds NaN or Inf (a caption weight, or a damaged "
                "text-encoder cache .npz)")
    return None


def _module(key: str) -> str:
    return key.split(".", 1)[0]


def load_network_weights(network: torch.nn.Module, path: str | os.PathLike) -> None:
    """`--network_weights`: every tensor finite, every module of the file loaded into the network; otherwise
    one line with the counts and an example key, before any step is trained."""
    sd, _ = load_state_dict(path)  # refuses NaN/Inf with the tensor's name, whatever module loads it next
    in_file = {_module(k) for k in sd}
    try:
        info = network.load_weights(str(path))
    except RuntimeError as e:  # torch reports shape mismatches even with strict=False
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise ToolkitError(f"--network_weights {path}: does not fit this network ({first[:200]}); train with "
                           "--dim_from_weights, or the file's --network_dim and --network_args") from None
    unexpected = getattr(info, "unexpected_keys", None)
    if unexpected is None:  # a third-party module that does not report what it loaded
        log.info("loaded network weights from %s", path)
        return
    unloaded = sorted({_module(k) for k in unexpected})
    loaded = len(in_file) - len(set(unloaded) & in_file)
    if unloaded or not loaded:
        example = unloaded[0] if unloaded else next(iter(sorted(in_file)), "(no tensors)")
        raise ToolkitError(f"--network_weights {path}: {len(unloaded)} of {len(in_file)} modules in the file match "
                           f"no module of this network (e.g. {example}); {loaded} loaded. Is the file made for "
                           "another model family, or other --network_args?")
    missing = {_module(k) for k in getattr(info, "missing_keys", []) if not re.search(r"\.alpha$", k)}
    log.info("loaded %d modules from %s%s", loaded, path,
             f"; {len(missing)} modules of the network start fresh" if missing else "")

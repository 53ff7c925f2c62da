"""Split a DyLoRA file into ordinary LoRA files, one per rank step below its full rank.

Outputs are `<save_to stem>-{r:04d}<ext>` for r = unit, 2·unit, … below the full rank (the full rank is the
input itself, as in sd-scripts); each holds the first r ranks of every module (`lora_down[:r]`, `lora_up[:, :r]`).
Alpha: files trained by this project's networks.dylora (`ss_dylora_rank_scale=constant`) were trained with
the scale alpha/dim at every rank, so a rank-r split carries alpha·r/dim and reproduces training exactly;
other DyLoRA files (sd-scripts) keep alpha unchanged, as sd-scripts' splitter does. `alpha_mode` overrides.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from library.errors import ToolkitError
from library.files import check_output_file, check_weights_suffix
from library.lora_io import ALPHA, DOWN, UP, load_lora, save_lora, split_modules

log = logging.getLogger(__name__)

RANK_SCALE_KEY = "ss_dylora_rank_scale"
ALPHA_MODES = ("auto", "keep", "scale")


def max_rank(sd: Mapping[str, torch.Tensor]) -> int:
    """The largest module rank (rows of lora_down) in a LoRA state dict."""
    return max((v.shape[0] for k, v in sd.items() if k.endswith("." + DOWN)), default=0)


def split_ranks(full_rank: int, unit: int) -> list[int]:
    """unit, 2·unit, … strictly below full_rank."""
    return list(range(unit, full_rank, unit))


def truncate(sd: Mapping[str, torch.Tensor], rank: int, scale_alpha: bool = False) -> dict[str, torch.Tensor]:
    """The first `rank` ranks of every module (down rows, up columns); other keys copied.

    With `scale_alpha`, each module's alpha becomes alpha·r/R (R its full rank, r the ranks kept), so the
    per-rank scale alpha/R of the full file is kept. A module without alpha gets one (alpha = R, its default).
    """
    out = {}
    for k, v in sd.items():
        if k.endswith("." + DOWN):
            out[k] = v[:rank].contiguous()
        elif k.endswith("." + UP):
            out[k] = v[:, :rank].contiguous()
        else:
            out[k] = v
    if scale_alpha:
        for k, down in sd.items():
            if not k.endswith("." + DOWN):
                continue
            name = k[: -len(DOWN) - 1]
            full, kept = down.shape[0], min(rank, down.shape[0])
            old = sd.get(f"{name}.{ALPHA}")
            alpha = float(old) if old is not None and float(old) != 0 else float(full)
            dtype = old.dtype if old is not None else torch.float32
            out[f"{name}.{ALPHA}"] = torch.tensor(alpha * kept / full, dtype=dtype)
    return out


def split_metadata(metadata: Mapping[str, str], full_rank: int, rank: int, scale_alpha: bool) -> dict[str, str]:
    """Input metadata with rank, comment (and alpha when scaled) updated; save_lora recomputes the hashes."""
    meta = dict(metadata)
    comment = meta.get("ss_training_comment", "")
    meta["ss_training_comment"] = f"split from DyLoRA, rank {full_rank} to {rank}; {comment}"
    meta["ss_network_dim"] = str(rank)
    if scale_alpha and "ss_network_alpha" in meta:
        try:
            meta["ss_network_alpha"] = str(float(meta["ss_network_alpha"]) * rank / full_rank)
        except ValueError:
            pass  # "Dynamic" or "None": nothing to scale
    meta.pop(RANK_SCALE_KEY, None)  # the outputs are plain LoRAs
    return meta


def unit_from_metadata(metadata: Mapping[str, str]) -> int | None:
    """The `unit` recorded in `ss_network_args` by training, if any."""
    try:
        args = json.loads(metadata.get("ss_network_args") or "{}")
        return int(args["unit"]) if isinstance(args, dict) and args.get("unit") not in (None, "None") else None
    except (ValueError, TypeError, KeyError):
        return None


def output_path(save_to: str | os.PathLike, rank: int) -> Path:
    """`<stem>-{rank:04d}<ext>`; a name without extension gets `.safetensors`."""
    base = Path(save_to)
    ext = base.suffix or ".safetensors"
    stem = base.name[: -len(base.suffix)] if base.suffix else base.name
    return base.with_name(f"{stem}-{rank:04d}{ext}")


def check_is_dylora(model: str | os.PathLike, metadata: Mapping[str, str]) -> None:
    """Only a DyLoRA's ranks are trained to be cut; a plain LoRA's first r ranks are no rank-r LoRA."""
    module = metadata.get("ss_network_module")
    if module and "dylora" not in module.lower():
        raise ToolkitError(f"{model}: not a DyLoRA file (trained with {module}); its first ranks are not a smaller "
                           "LoRA. Use resize_lora.py to lower its rank")
    if not module:
        log.warning("%s: the metadata does not say how it was trained; splitting it as a DyLoRA", model)


def _resolve_unit(model: str | os.PathLike, metadata: Mapping[str, str], unit: int | None, full: int) -> int:
    recorded = unit_from_metadata(metadata)
    if unit is None:
        if recorded is None:
            raise ToolkitError(f"{model}: --unit is needed (the file's metadata does not record the DyLoRA unit)")
        unit = recorded
    if unit < 1:
        raise ToolkitError(f"--unit {unit}: must be 1 or more")
    if recorded is not None and recorded != unit:
        log.warning("%s was trained with unit=%d; --unit %d gives ranks it was not trained at", model, recorded, unit)
    if unit >= full:
        raise ToolkitError(f"{model}: --unit {unit} is not below the file's rank {full}: nothing to split")
    if full % unit:
        log.warning("the file's rank %d is not a multiple of --unit %d", full, unit)
    return unit


def split_file(model: str | os.PathLike, save_to: str | os.PathLike, unit: int | None = None,
               alpha_mode: str = "auto") -> list[Path]:
    """Write one LoRA per rank step of a DyLoRA file; returns the paths written (smallest rank first)."""
    if alpha_mode not in ALPHA_MODES:
        raise ToolkitError(f"--alpha {alpha_mode!r}: use one of {', '.join(ALPHA_MODES)}")
    check_output_file(save_to, "--save_to")
    check_weights_suffix(output_path(save_to, 1), "--save_to")
    sd, metadata = load_lora(model)
    check_is_dylora(model, metadata)
    ranks = {m.rank for m in split_modules(sd, model).values()}
    full = max(ranks)
    unit = _resolve_unit(model, metadata, unit, full)
    for rank in split_ranks(full, unit):
        check_output_file(output_path(save_to, rank), "--save_to", [("--model", model)])
    if len(ranks) > 1:
        log.warning("%s: modules have different ranks %s; each output keeps at most r ranks per module",
                    model, sorted(ranks))
    scale_alpha = alpha_mode == "scale" or (alpha_mode == "auto" and metadata.get(RANK_SCALE_KEY) == "constant")
    log.info("splitting rank %d in steps of %d; alpha %s", full, unit,
             f"scaled by r/{full} (trained at a constant scale)" if scale_alpha else "kept (as sd-scripts)")
    written = []
    for rank in split_ranks(full, unit):
        path = output_path(save_to, rank)
        save_lora(path, truncate(sd, rank, scale_alpha), split_metadata(metadata, full, rank, scale_alpha))
        log.info("rank %d -> %s", rank, path)
        written.append(path)
    return written

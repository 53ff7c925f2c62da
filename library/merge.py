"""Merge LoRAs into an original-layout checkpoint (SD1, SD2, SDXL), streaming one tensor at a time.

The checkpoint is never turned into Diffusers models: each LoRA module is mapped to its weight key (and row
slice for OpenCLIP's packed q/k/v) by `library.keys.checkpoint_targets`, every tensor is read, updated
W ← W + Σ ratio·ΔW in the math dtype (ΔW from `library.adapters`, any algorithm; DoRA decomposed on the weight),
cast and written before the next one is read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import library.adapters as A
from library.errors import ToolkitError
from library.files import (
    SAFETENSORS_EXT,
    LazySafetensors,
    open_streaming,
    read_ahead,
    save_state_dict,
    stream_safetensors,
)
from library.keys import checkpoint_targets, detect_family
from library.lora_sources import LoRASource, same_layer
from library.metadata import family_from_metadata, modelspec

log = logging.getLogger(__name__)
FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}


@dataclass(frozen=True)
class Hit:
    """One LoRA module landing on a checkpoint tensor (rows: slice of a packed q/k/v weight)."""

    source: LoRASource
    name: str
    rows: tuple[int, int] | None
    bias: bool = False  # the hit changes the layer's bias (`diff_b` of a full module)


def tensor_shapes(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    if isinstance(tensors, LazySafetensors):
        return {k: tensors.shape(k) for k in tensors}
    return {k: tuple(v.shape) for k, v in tensors.items()}


def resolve_family(shapes: Mapping[str, tuple[int, ...]], path: Path, asked: str | None) -> str:
    """Family from the checkpoint's keys; a contradicting flag is reported and the keys win."""
    detected = detect_family(shapes)
    if detected is None:
        raise ToolkitError(f"{path}: not an SD1/SD2/SDXL single-file checkpoint (no known text-encoder keys)")
    if asked and asked != detected:
        log.warning("%s: the keys are those of an %s checkpoint, not %s as asked; merging it as %s",
                    path, FAMILY_NAMES[detected], FAMILY_NAMES[asked], FAMILY_NAMES[detected])
    return detected


def _check_family(source: LoRASource, family: str, model: Path) -> None:
    if source.family == "sdxl" and family != "sdxl":
        raise ToolkitError(f"{source.path}: an SDXL LoRA cannot be merged into the {FAMILY_NAMES[family]} model "
                           f"{model}")
    if source.family == "sd" and family == "sdxl":
        raise ToolkitError(f"{source.path}: an SD1/SD2 LoRA cannot be merged into the SDXL model {model}")
    meta_family = family_from_metadata(source.metadata)
    if meta_family and meta_family != family:
        raise ToolkitError(f"{source.path}: its metadata says it is for {FAMILY_NAMES[meta_family]}, but {model} is "
                           f"{FAMILY_NAMES[family]}; is the LoRA made for another base model?")


def plan_merge(shapes: Mapping[str, tuple[int, ...]], family: str, sources: Sequence[LoRASource],
               model: Path) -> dict[str, list[Hit]]:
    """Which LoRA modules change which tensor; every shape is checked here, before anything is written."""
    targets = checkpoint_targets(dict(shapes), family)
    plan: dict[str, list[Hit]] = {}
    for src in sources:
        _check_family(src, family, model)
        missing, hits = [], 0
        norms = [n for n in src.names if src.algos[n] == A.NORM]
        if norms:
            log.warning("%s: %d norm module(s) (w_norm/b_norm) are not merged into checkpoints: %s", src.path.name,
                        len(norms), ", ".join(norms[:3]) + (" ..." if len(norms) > 3 else ""))
        for name in src.names:
            if src.algos[name] == A.NORM:
                continue
            t = targets.get(name)
            if t is None:
                missing.append(name)
                continue
            shape = shapes[t.key]
            if t.rows:
                shape = (t.rows[1] - t.rows[0], *shape[1:])
            if not same_layer(src.delta_shape(name), shape):
                raise ToolkitError(f"{src.path}: module {name} makes a {src.delta_shape(name)} change but {t.key} "
                                   f"is {shape} in {model}; is the LoRA made for another base model (SD1 vs SD2)?")
            plan.setdefault(t.key, []).append(Hit(src, name, t.rows))
            if "diff_b" in src.stand_ins[name]:
                bias_key = t.key.removesuffix("weight") + "bias"
                if bias_key not in shapes or t.rows:
                    raise ToolkitError(f"{src.path}: module {name} changes a bias that {model} does not have")
                plan.setdefault(bias_key, []).append(Hit(src, name, None, bias=True))
            hits += 1
        if hits == 0:
            raise ToolkitError(f"{src.path}: none of its {len(src.names)} modules exist in {model} "
                               f"({FAMILY_NAMES[family]}); is it a LoRA for this kind of model?")
        if missing:
            log.warning("%s: no module found in the model for %d LoRA module(s), skipped: %s%s", src.path.name,
                        len(missing), ", ".join(missing[:5]), " ..." if len(missing) > 5 else "")
            log.debug("all skipped modules: %s", ", ".join(missing))
    return plan


def apply_hits(w: torch.Tensor, hits: Sequence[Hit], dtype: torch.dtype) -> torch.Tensor:
    """W' of every module in order, in `dtype`: W + s·ΔW (α/r once, whatever the algorithm), DoRA decomposed on the
    weight as it stands; 1x1-conv LoRAs on Linear weights are squeezed (and the reverse)."""
    w = w.to(dtype, copy=True)
    for h in hits:
        src, name = h.source, h.name
        part = w[h.rows[0]:h.rows[1]] if h.rows else w
        if h.bias:
            part += src.weight(name) * A.bias_delta(src.module(name), dtype)
        elif src.is_plain(name):
            f = src.factors(name, dtype)
            # one fused W += coef·up@down on the 2-D view (rows of a contiguous weight stay contiguous)
            part.view(part.shape[0], -1).addmm_(f.up2d(), f.down2d(), alpha=src.coef(name))
        else:
            part.copy_(A.apply_delta(part, src.module(name, dtype), src.weight(name), name))
    return w


def checkpoint_metadata(base_meta: Mapping[str, str], family: str, model: Path, sources: Sequence[LoRASource],
                        save_to: Path, no_metadata: bool) -> dict[str, str]:
    """The base's metadata, plus modelspec for a checkpoint with `merged_from` = model and LoRAs."""
    meta = dict(base_meta)
    if no_metadata:
        return meta
    pred = base_meta.get("modelspec.prediction_type")
    if pred is None and family == "sd2":
        log.warning("the weights cannot tell epsilon from v-prediction; writing v (as for SD2 768-v) in metadata")
    v_param = pred == "v" if pred else family == "sd2"
    titles = [base_meta.get("modelspec.title") or model.stem] + [s.title for s in sources]
    meta.update(modelspec(family, v_param, lora=False, title=save_to.stem, merged_from=", ".join(titles)))
    return meta


def merge_into_checkpoint(model: str | os.PathLike, sources: Sequence[LoRASource], save_to: str | os.PathLike,
                          family: str | None = None, dtype: torch.dtype = torch.float32,
                          save_dtype: torch.dtype | None = None, no_metadata: bool = False) -> str:
    """Write `model` + the LoRAs to `save_to` (.safetensors streamed; .ckpt via torch.save); returns the family.

    `dtype` is the math dtype; floating tensors are written in `save_dtype` (default: `dtype`).
    """
    model, save_to = Path(model), Path(save_to)
    if model.is_dir():
        raise ToolkitError(f"{model}: is a folder; merging needs a single-file .safetensors/.ckpt checkpoint")
    base, base_meta = open_streaming(model)
    shapes = tensor_shapes(base)
    family = resolve_family(shapes, model, family)
    plan = plan_merge(shapes, family, sources, model)
    save_dtype = save_dtype or dtype
    out_dtype = {k: save_dtype if _is_float(base, k) else _dtype(base, k) for k in shapes}
    meta = checkpoint_metadata(base_meta, family, model, sources, save_to, no_metadata)

    def produce() -> Iterator[torch.Tensor]:
        for key, t in tqdm(read_ahead(base, shapes), total=len(shapes), desc="merging", unit="tensor"):
            if key in plan:
                t = apply_hits(t, plan[key], dtype)
            yield t  # cast (range-checked) by the writer

    log.info("merging %d LoRA module(s) into %d tensors of %s", sum(len(h) for h in plan.values()), len(plan),
             model.name)
    if save_to.suffix.lower() == SAFETENSORS_EXT:
        layout = [(k, out_dtype[k], shapes[k]) for k in shapes]
        stream_safetensors(save_to, layout, produce(), meta)
    else:
        sd = dict(zip(shapes, produce()))
        save_state_dict(sd, save_to, extra={"epoch": 0, "global_step": 0}, dtype=save_dtype)
    log.info("saved %s", save_to)
    return family


def _dtype(tensors: Mapping[str, torch.Tensor], key: str) -> torch.dtype:
    return tensors.dtype(key) if isinstance(tensors, LazySafetensors) else tensors[key].dtype


def _is_float(tensors: Mapping[str, torch.Tensor], key: str) -> bool:
    return _dtype(tensors, key).is_floating_point


class BaseWeights:
    """Base-model weights looked up by LoRA module name, read on demand (DoRA's change depends on them)."""

    def __init__(self, path: str | os.PathLike, family: str | None = None) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise ToolkitError(f"{self.path}: is a folder; give a single-file .safetensors/.ckpt checkpoint")
        self.tensors, _ = open_streaming(self.path)
        self.shapes = tensor_shapes(self.tensors)
        self.family = resolve_family(self.shapes, self.path, family)
        self.targets = checkpoint_targets(self.shapes, self.family)

    def get_shape(self, name: str) -> tuple[int, ...] | None:
        """Shape of the weight module `name` changes, or None when the model has no such layer."""
        t = self.targets.get(name)
        if t is None:
            return None
        shape = self.shapes[t.key]
        return (t.rows[1] - t.rows[0], *shape[1:]) if t.rows else tuple(shape)

    def get(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """The weight module `name` changes (its rows for OpenCLIP's packed q/k/v), or None when absent."""
        t = self.targets.get(name)
        if t is None:
            return None
        w = self.tensors[t.key].to(dtype)
        return w[t.rows[0]:t.rows[1]] if t.rows else w

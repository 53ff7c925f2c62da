"""SDXL text-encoder output cache (`--cache_text_encoder_outputs`, `--cache_text_encoder_outputs_to_disk`).

Each caption is encoded once before training, so the text encoders can leave memory. On disk, sd-scripts'
`<image stem>_te_outputs.npz` holds `hidden_state1` [T, 768], `hidden_state2` [T, 1280] and `pool2` [1280];
this toolkit adds `caption` and `encoders` (a fingerprint of the encoder weights and the token length), so a
file is reused only while the caption and the encoders are unchanged and is rebuilt otherwise. With
`--skip_cache_check` any file that has the three arrays is used as it is (sd-scripts' files included).

Caching needs a caption that never changes and encoders that do not train: refused with one line otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from library.data.captions import process_caption
from library.data.latents import NPZ_ERRORS
from library.errors import ToolkitError
from library.files import atomic_path
from library.train.text import SdxlTextConditioner, SdxlTextOutputs

log = logging.getLogger(__name__)
SUFFIX = "_te_outputs.npz"
_VARYING = (("shuffle_caption", "shuffles the tags"), ("caption_dropout_rate", "drops captions"),
            ("caption_dropout_every_n_epochs", "drops captions"), ("caption_tag_dropout_rate", "drops tags"),
            ("token_warmup_step", "grows the caption (token warm-up)"),
            ("enable_wildcard", "picks a caption at random"))


def check_cacheable(subsets: Sequence, train_text_encoder: bool, option: str = "--cache_text_encoder_outputs",
                    sdxl: bool = True) -> None:
    """Refuse combinations where cached outputs would differ from what training needs."""
    if not sdxl:
        raise ToolkitError(f"{option}: text-encoder output caching is for SDXL models (SD1/SD2 encode each step)")
    if train_text_encoder:
        raise ToolkitError(f"{option}: the text encoders' LoRA cannot train on cached outputs; add "
                           "--network_train_unet_only")
    for subset in subsets:
        for name, what in _VARYING:
            if getattr(subset.caption, name):
                raise ToolkitError(f"{option}: {subset.image_dir}: {name} {what} each time, so the encoding "
                                   f"cannot be cached; drop {name} or {option}")


def encoders_fingerprint(text_encoders: Sequence[torch.nn.Module], max_token_length: int | None) -> str:
    """A short hash of the encoder weights (a strided sample of every tensor plus its sum) and the token length:
    cheap even for bigG, and changes when the model, a merged `--base_weights` or the length changes."""
    h = hashlib.sha256(f"v1 {max_token_length}".encode())
    for i, te in enumerate(text_encoders):
        for name, p in te.state_dict().items():
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 1024)].float().cpu()
            h.update(f"{i}.{name}{tuple(p.shape)}{float(flat.double().sum()):.9g}".encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()[:32]


def npz_path(image: Path) -> Path:
    return image.with_name(image.stem + SUFFIX)


def cached_caption(record) -> str:  # noqa: ANN001 - an ImageRecord
    """The caption a record always trains with (deterministic once `check_cacheable` passed)."""
    return process_caption(record.caption, record.subset.caption, random.Random(0))


def load_npz(path: Path, caption: str, fingerprint: str, skip_check: bool = False) -> SdxlTextOutputs | None:
    """The cached outputs when the file is there and (unless skip_check) matches the caption and encoders."""
    if not path.exists():
        return None
    try:
        with np.load(path) as npz:
            if not {"hidden_state1", "hidden_state2", "pool2"} <= set(npz.files):
                return None
            if not skip_check and (str(npz.get("caption", "")) != caption
                                   or str(npz.get("encoders", "")) != fingerprint):
                return None
            arrays = [torch.from_numpy(np.array(npz[k], dtype=np.float32))[None]
                      for k in ("hidden_state1", "hidden_state2", "pool2")]
    except NPZ_ERRORS as e:
        log.warning("%s: unreadable text-encoder cache (%s); encoding again", path, str(e) or type(e).__name__)
        return None
    if not all(bool(torch.isfinite(a).all()) for a in arrays):
        log.warning("%s: the cached text-encoder outputs hold NaN or Inf; encoding again", path)
        return None
    return SdxlTextOutputs(*arrays)


def save_npz(path: Path, outs: SdxlTextOutputs, caption: str, fingerprint: str) -> None:
    arrays = {"hidden_state1": outs.hidden1[0], "hidden_state2": outs.hidden2[0], "pool2": outs.pool2[0]}
    arrays = {k: v.float().cpu().numpy() for k, v in arrays.items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays, caption=np.array(caption), encoders=np.array(fingerprint))


@torch.no_grad()
def cache_text_outputs(records: Sequence, conditioner: SdxlTextConditioner, fingerprint: str, to_disk: bool = False,
                       skip_check: bool = False, batch_size: int = 8, autocast: Callable | None = None,
                       rank: int = 0, world: int = 1, show_progress: bool = True) -> None:
    """Encode every distinct caption once. In memory: set `record.te_outputs`. On disk: write this rank's share
    of missing or stale files; the caller reads them all back with `load_cached` after a barrier."""
    todo: dict[str, list] = {}
    for i, r in enumerate(records):
        caption = cached_caption(r)
        if to_disk:
            r.te_npz = npz_path(r.path)
            if i % world != rank or load_npz(r.te_npz, caption, fingerprint, skip_check) is not None:
                continue
        todo.setdefault(caption, []).append(r)
    captions = list(todo)
    bar = tqdm(total=len(captions), desc="caching text encoder outputs", unit="caption",
               disable=not show_progress or not captions)
    for start in range(0, len(captions), batch_size):
        chunk = captions[start:start + batch_size]
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            outs = conditioner(chunk).to("cpu", torch.float32)
        for k, caption in enumerate(chunk):
            row = outs.row(k)
            for r in todo[caption]:
                if to_disk:
                    save_npz(r.te_npz, row, caption, fingerprint)
                else:
                    r.te_outputs = row
        bar.update(len(chunk))
    bar.close()
    if not to_disk:
        log.info("text encoder outputs cached in memory: %d captions for %d images", len(captions), len(records))


def load_cached(records: Sequence, fingerprint: str, skip_check: bool = False) -> None:
    """Read every record's outputs back from its `.npz` (after all ranks have written theirs)."""
    for r in records:
        outs = load_npz(r.te_npz, cached_caption(r), fingerprint, skip_check)
        if outs is None:
            raise ToolkitError(f"{r.te_npz}: text-encoder cache missing or stale after caching (another run "
                               "writing the same files?)")
        r.te_outputs = outs

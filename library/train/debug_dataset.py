"""`--debug_dataset`: see what training would see, without training. Each sample of the run's first batches is
written as the PNG the VAE would encode (bucket-sized, cropped, flipped, colour-augmented) to
`<output_dir>/debug_dataset/`, and `captions.txt` lists per sample its source image, bucket, crop, flip and the
caption as it trains (prefix/suffix, wildcards, shuffled, dropped tags; with --weighted_captions the weights).

No model is loaded. sd-scripts opens a window per image instead; these machines have no display.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from tqdm import tqdm

from library.data.dataset import BatchRequest, TrainDataset
from library.files import atomic_path, check_output_dir, write_text_atomic
from library.models import peek_family
from library.train.setup import dataset_configs

if TYPE_CHECKING:
    from library.options.train import TrainConfig

log = logging.getLogger(__name__)
FOLDER = "debug_dataset"
INDEX = "captions.txt"


def _png(pixels: torch.Tensor, path: Path, caption: str, mask: torch.Tensor | None) -> None:
    """A [-1, 1] CHW tensor as an 8-bit PNG (the caption in its text chunk; the loss mask as its alpha)."""
    img = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    if mask is not None:
        img = np.concatenate([img, (mask.float().clamp(0, 1) * 255).round().byte().numpy()[:, :, None]], axis=2)
    info = PngImagePlugin.PngInfo()
    info.add_text("caption", caption)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG", pnginfo=info)


def _weights(caption: str) -> str:
    from library.generate.text import parse_emphasis

    runs = [(text, w) for text, w in parse_emphasis(caption) if w != 1.0]
    return "; weights: " + ", ".join(f"{text.strip()!r}:{w:g}" for text, w in runs) if runs else ""


def _clear(folder: Path) -> None:
    """Remove what an earlier --debug_dataset run wrote (only its own files)."""
    for p in [*folder.glob("e*_b*_*.png"), folder / INDEX]:
        if p.is_file():
            p.unlink()


def total_batches(cfg: TrainConfig, dataset: TrainDataset) -> int:
    """Batches training would draw: --max_train_steps optimizer steps (or --max_train_epochs epochs)."""
    per_epoch = dataset.num_batches()
    if cfg.max_train_epochs:
        return cfg.max_train_epochs * per_epoch
    return cfg.max_train_steps * max(1, cfg.gradient_accumulation_steps)


def debug_dataset(cfg: TrainConfig, sdxl_script: bool = False) -> Path:
    """Write the first batches' samples and captions; returns the folder. Nothing is trained or saved."""
    out = check_output_dir(Path(cfg.output_dir or "."), "--output_dir") / FOLDER
    model = cfg.pretrained_model_name_or_path
    family = (peek_family(model) if model and Path(model).exists() else None) or ("sdxl" if sdxl_script else None)
    seed = cfg.seed if cfg.seed is not None else 0
    dataset = TrainDataset(dataset_configs(cfg, family), seed, cfg.prior_loss_weight,
                           cfg.cache_latents or cfg.cache_latents_to_disk)
    dataset.max_train_steps = cfg.max_train_steps
    n = total_batches(cfg, dataset)
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    accum = max(1, cfg.gradient_accumulation_steps)
    lines, written = [], 0
    per_epoch = dataset.num_batches()
    with tqdm(total=n, desc="debug dataset", unit="batch") as bar:
        for k in range(n):
            epoch, position = divmod(k, per_epoch)
            if position == 0:
                plan = dataset.plan_epoch(epoch)
            batch = dataset[BatchRequest(tuple(plan[position]), epoch, position, k // accum)]
            masks = batch["masks"]
            for slot, caption in enumerate(batch["captions"]):
                src = batch["paths"][slot]
                name = f"e{epoch + 1:03d}_b{position + 1:05d}_{slot:02d}_{src.stem}.png"
                _png(batch["images"][slot], out / name, caption, None if masks is None else masks[slot])
                _, _, top, left, th, tw = batch["size_cond"][slot].tolist()
                line = (f"{name}\t{src}\tbucket {tw}x{th}\tcrop top,left {top},{left}\t"
                        f"flip {'yes' if batch['flipped'][slot] else 'no'}\tcaption {caption!r}"
                        + (_weights(caption) if cfg.weighted_captions else ""))
                lines.append(line)
                log.info("step %d, %s", k // accum + 1, line.replace("\t", ", "))
                written += 1
            bar.update(1)
    write_text_atomic(out / INDEX, "\n".join(lines) + "\n")
    log.info("--debug_dataset: %d images of %d batches (%d per epoch) in %s; nothing was trained", written, n,
             per_epoch, out)
    if cfg.cache_latents or cfg.cache_latents_to_disk or dataset.has_precomputed_latents():
        log.info("with cached latents training uses centred crops and, with flip_aug, 50%% mirrored latents: "
                 "the images above show the uncached path")
    return out

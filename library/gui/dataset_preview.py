"""What a training run would find in its dataset, as a Markdown table for the Train tab: each image folder with
its repeats, images, captions, and the buckets the images fall in. Read through library/data, so it is what the
trainer sees (the same folder rules and the same errors)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from library.data.buckets import BucketSelector
from library.data.config import DatasetConfig, datasets_from_config, datasets_from_folders
from library.data.folders import glob_images, read_caption
from library.data.images import image_size
from library.errors import ToolkitError

FOLDERS_HELP = """**Image folders**: `train_data_dir` is the parent of folders named `<repeats>_<name>`, e.g.
`default/img/10_sks/`: every image in it is seen 10 times per epoch, and `sks` is its class token (used as the
caption when an image has no caption file). Each image's caption is the file beside it with `caption_extension`
(`001.png` + `001.caption`). `reg_data_dir` holds regularisation folders the same way. Or give a dataset TOML
(`dataset_config`: `[general]`, `[[datasets]]`, `[[datasets.subsets]]`) instead of folders."""


def find_datasets(values: dict) -> list[DatasetConfig]:
    """The datasets of parsed option values (a dataset TOML, or the folders of --train_data_dir/--reg_data_dir)."""
    if values.get("dataset_config"):
        return datasets_from_config(values["dataset_config"], values)
    if values.get("train_data_dir"):
        return datasets_from_folders(values["train_data_dir"], values.get("reg_data_dir"), values)
    raise ToolkitError("--train_data_dir or --dataset_config: give the images to train on")


def describe_datasets(values: dict, limit: int = 2000) -> str:
    """A Markdown summary of what training would read: per folder, the repeats, images, captions, an example
    caption; per dataset, the resolution, batch size and bucket counts."""
    lines = []
    for i, ds in enumerate(find_datasets(values)):
        res = f"{ds.resolution[0]}x{ds.resolution[1]}"
        lines += [f"**dataset {i + 1}**: resolution {res}, batch size {ds.batch_size}, buckets "
                  f"{'on' if ds.enable_bucket else 'off'}", "",
                  "| folder | repeats | images | captions | steps' share | example caption |",
                  "|---|---|---|---|---|---|"]
        selector = BucketSelector(ds.resolution, ds.enable_bucket, ds.min_bucket_reso, ds.max_bucket_reso,
                                  ds.bucket_reso_steps, ds.bucket_no_upscale)
        buckets: Counter = Counter()
        total = 0
        for sub in ds.subsets:
            images = glob_images(Path(sub.image_dir))[:limit]
            captions = [read_caption(p, sub.caption_extension) for p in images]
            with_caption = sum(c is not None for c in captions)
            example = next((c.strip() for c in captions if c), sub.class_tokens or "")
            for p in images:
                size = image_size(p)
                if size:
                    buckets[selector.select(*size).bucket] += sub.num_repeats
            total += len(images) * sub.num_repeats
            kind = " (reg)" if sub.is_reg else ""
            lines.append(f"| `{sub.image_dir}`{kind} | {sub.num_repeats} | {len(images)} | {with_caption} | "
                         f"{len(images) * sub.num_repeats} | {_cell(example)} |")
        steps = -(-total // ds.batch_size) if ds.batch_size else 0
        shown = ", ".join(f"{w}x{h}: {n}" for (w, h), n in sorted(buckets.items()))
        lines += ["", f"{total} images per epoch (about {steps} steps of {ds.batch_size}); buckets: {shown or 'none'}", ""]
    return "\n".join(lines)


def _cell(text: str) -> str:
    text = " ".join(text.split())
    return (text[:80] + "…" if len(text) > 80 else text).replace("|", "\\|")

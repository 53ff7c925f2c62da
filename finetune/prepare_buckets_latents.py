"""Give every image of a fine-tuning metadata JSON its bucket and its VAE latents (sd-scripts' tool and command line).

    python finetune/prepare_buckets_latents.py train_images/ meta_cap_dd.json meta_lat.json model.safetensors \
        --max_resolution 512,512 --batch_size 4 [--flip_aug] [--bucket_no_upscale]

Writes `train_resolution` into each entry of `out_json` and `<image stem>.npz` (sd-scripts' keys) beside each
image; training reads those latents instead of the images when they fit its buckets. model_name_or_path is a
checkpoint, a VAE file or a Diffusers folder (nothing is downloaded). docs/finetune_metadata.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import run_main  # noqa: E402
from library.options.tools import parse_tool_args  # noqa: E402


def _truthy(value: str) -> bool:
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def main(argv: list[str] | None = None) -> None:
    args = parse_tool_args("prepare_buckets_latents", argv)
    from library.data.prepare_latents import PrepareOptions, prepare_buckets_latents

    options = PrepareOptions(
        batch_size=args.batch_size, max_resolution=args.max_resolution, min_bucket_reso=args.min_bucket_reso,
        max_bucket_reso=args.max_bucket_reso, bucket_reso_steps=args.bucket_reso_steps,
        bucket_no_upscale=args.bucket_no_upscale, mixed_precision=args.mixed_precision, full_path=args.full_path,
        flip_aug=args.flip_aug, alpha_mask=_truthy(args.alpha_mask), skip_existing=args.skip_existing,
        recursive=args.recursive)
    prepare_buckets_latents(args.train_data_dir, args.in_json, args.out_json, args.model_name_or_path, options)


if __name__ == "__main__":
    sys.exit(run_main(main))

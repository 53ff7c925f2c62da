"""Give every image of a fine-tuning metadata JSON its bucket and its VAE latents (sd-scripts' tool and command line).

    python finetune/prepare_buckets_latents.py train_images/ meta_cap_dd.json meta_lat.json model.safetensors \
        --max_resolution 512,512 --batch_size 4 [--flip_aug] [--bucket_no_upscale]

Writes `train_resolution` into each entry of `out_json` and `<image stem>.npz` (sd-scripts' keys) beside each
image; training reads those latents instead of the images when they fit its buckets. model_name_or_path is a
checkpoint, a VAE file or a Diffusers folder (nothing is downloaded). docs/finetune_metadata.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import add_verbosity, run_main, setup_logging  # noqa: E402


def _truthy(value: str) -> bool:
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def setup_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train_data_dir", help="folder of the training images")
    parser.add_argument("in_json", help="metadata file to read (merge_captions_to_metadata.py's output)")
    parser.add_argument("out_json", help="metadata file to write (may be in_json)")
    parser.add_argument("model_name_or_path", help="checkpoint, VAE file or Diffusers folder whose VAE encodes")
    parser.add_argument("--v2", action="store_true", help="not used (sd-scripts keeps it for old command lines)")
    parser.add_argument("--batch_size", type=int, default=1, help="images per VAE batch [1]")
    parser.add_argument("--max_data_loader_n_workers", type=int, default=None,
                        help="accepted for sd-scripts' command lines; images are read in this process")
    parser.add_argument("--max_resolution", default="512,512", help="training size 'width,height' [512,512]")
    parser.add_argument("--min_bucket_reso", type=int, default=256, help="smallest bucket side [256]")
    parser.add_argument("--max_bucket_reso", type=int, default=1024, help="largest bucket side [1024]")
    parser.add_argument("--bucket_reso_steps", type=int, default=64, help="bucket sides are multiples of this [64]")
    parser.add_argument("--bucket_no_upscale", action="store_true", help="never enlarge an image to its bucket")
    parser.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"],
                        help="VAE precision [no]")
    parser.add_argument("--full_path", action="store_true", help="the metadata keys are full paths")
    parser.add_argument("--flip_aug", action="store_true", help="also store the latents of the mirrored image")
    parser.add_argument("--alpha_mask", nargs="?", const="true", default="", type=str,
                        help="also store each image's alpha channel as its loss mask")
    parser.add_argument("--skip_existing", action="store_true", help="keep .npz files that already fit")
    parser.add_argument("--recursive", action="store_true", help="also images in sub-folders (needs --full_path)")
    add_verbosity(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = setup_parser().parse_args(argv)
    setup_logging(args.verbosity)
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

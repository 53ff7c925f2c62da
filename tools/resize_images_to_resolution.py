"""Shrink every image in a folder to one or more maximum areas, keeping the aspect ratio; never upscales.

Each image is written once per resolution as `<stem>+<WxH>.jpg` (or `.png` with --save_as_png).
Example: python tools/resize_images_to_resolution.py img/ img_small/ --max_resolution 512x512,384x384
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import add_verbosity, run_main, setup_logging  # noqa: E402
from library.options.choices import INTERPOLATIONS  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src_img_folder", help="folder with the source images (not searched recursively)")
    parser.add_argument("dst_img_folder", help="output folder (created if missing)")
    parser.add_argument("--max_resolution", default="512x512,384x384,256x256,128x128",
                        help="comma-separated WxH list; only the area W*H matters [512x512,384x384,256x256,128x128]")
    parser.add_argument("--divisible_by", type=int, default=1,
                        help="crop both sides (centred) down to a multiple of this [1]")
    parser.add_argument("--interpolation", choices=INTERPOLATIONS, default=None,
                        help="resampling filter [area]")
    parser.add_argument("--save_as_png", action="store_true", help="write PNG instead of JPEG (quality 100)")
    parser.add_argument("--copy_associated_files", action="store_true",
                        help="also copy same-named non-image files (captions) as <stem>+<WxH><ext>")
    add_verbosity(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbosity)
    from library.image_resize import parse_resolutions, resize_folder

    resize_folder(args.src_img_folder, args.dst_img_folder, parse_resolutions(args.max_resolution),
                  args.divisible_by, args.interpolation, args.save_as_png, args.copy_associated_files)


if __name__ == "__main__":
    sys.exit(run_main(main))

"""Shrink every image in a folder to one or more maximum areas, keeping the aspect ratio; never upscales.

Each image is written once per resolution as `<stem>+<WxH>.jpg` (or `.png` with --save_as_png).
Example: python tools/resize_images_to_resolution.py img/ img_small/ --max_resolution 512x512,384x384
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import run_main  # noqa: E402
from library.options.tools import parse_tool_args  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args = parse_tool_args("resize_images_to_resolution", argv)
    from library.image_resize import parse_resolutions, resize_folder

    resize_folder(args.src_img_folder, args.dst_img_folder, parse_resolutions(args.max_resolution),
                  args.divisible_by, args.interpolation, args.save_as_png, args.copy_associated_files)


if __name__ == "__main__":
    sys.exit(run_main(main))

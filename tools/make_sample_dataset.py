"""Write the tiny procedural "sks circle" dataset used by the quickstart (sd-scripts DreamBooth layout).

Usage:
    python tools/make_sample_dataset.py OUT_DIR [--num_images 12] [--resolution 64] [--seed 0] [--no_aspect_ratios]
                                               [--masks]

The images land in OUT_DIR/img/10_sks circle/; pass OUT_DIR/img as train_data_dir. With --masks, also the circle
masks in OUT_DIR/mask/ (for --masked_loss --conditioning_data_dir) and RGBA copies of the images, the mask as
their alpha channel, in OUT_DIR/img_alpha/10_sks circle/ (for --alpha_mask); when OUT_DIR/img exists already
(the embedded default: `python tools/make_sample_dataset.py default --masks`) only the masks are written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import run_main  # noqa: E402
from library.errors import ToolkitError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and build the dataset."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="output folder; images go to OUT_DIR/img")
    parser.add_argument("--num_images", type=int, default=12, help="number of images (default: %(default)s)")
    parser.add_argument("--resolution", type=int, default=64, help="short side in pixels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--aspect_ratios",
        dest="aspect_ratios",
        action="store_true",
        default=True,
        help="mix in 3:2 landscape and 2:3 portrait images (default)",
    )
    parser.add_argument("--no_aspect_ratios", dest="aspect_ratios", action="store_false", help="square images only")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR/img")
    parser.add_argument("--masks", action="store_true", help="also write loss masks (OUT_DIR/mask) and RGBA images "
                        "with the mask as alpha (OUT_DIR/img_alpha)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from library.files import check_output_dir  # imports torch: only once the work starts
    from library.sample_data import CONCEPT, REPEATS, make_sample_dataset, make_sample_masks

    check_output_dir(args.out_dir, "out_dir")
    if args.masks and (args.out_dir / "img").exists() and not args.overwrite:
        # masks for a sample dataset written before: they match it when the arguments do
        if not (args.out_dir / "img" / f"{REPEATS}_{CONCEPT}").is_dir():
            raise ToolkitError(f"{args.out_dir / 'img'}: holds another dataset, not this tool's; its masks would not "
                               "fit those images: give a new folder")
        logging.getLogger(__name__).info("%s exists: writing the masks only", args.out_dir / "img")
    else:
        try:
            train_dir = make_sample_dataset(
                args.out_dir, args.num_images, args.resolution, args.seed, args.aspect_ratios, args.overwrite
            )
        except (ValueError, FileExistsError) as exc:
            parser.error(str(exc))
        logging.getLogger(__name__).info("train_data_dir: %s", train_dir)
    if args.masks:
        masks, alpha = make_sample_masks(args.out_dir, args.num_images, args.resolution, args.seed, args.aspect_ratios)
        logging.getLogger(__name__).info("conditioning_data_dir: %s; alpha_mask train_data_dir: %s", masks, alpha)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))

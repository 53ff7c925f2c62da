"""Put each image's caption file into a fine-tuning metadata JSON (sd-scripts' tool and command line).

    python finetune/merge_captions_to_metadata.py train_images/ meta_cap.json [--caption_extension .caption]

Keys are the image stems (`--full_path`: whole paths; needed with `--recursive`). An existing `out_json` (or
`--in_json`) is extended: its entries keep their tags, their captions are replaced. docs/finetune_metadata.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import add_verbosity, run_main, setup_logging  # noqa: E402


def setup_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train_data_dir", help="folder of the training images")
    parser.add_argument("out_json", help="metadata file to write")
    parser.add_argument("--in_json", help="metadata file to start from [out_json when it exists]")
    parser.add_argument("--caption_extension", default=".caption", help="extension of the caption files [.caption]")
    parser.add_argument("--caption_extention", default=None, help=argparse.SUPPRESS)  # sd-scripts' old spelling
    parser.add_argument("--full_path", action="store_true", help="key images by their full path, not their stem")
    parser.add_argument("--recursive", action="store_true", help="also images in sub-folders (needs --full_path)")
    parser.add_argument("--debug", action="store_true", help="log each caption")
    add_verbosity(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = setup_parser().parse_args(argv)
    setup_logging(max(args.verbosity, int(args.debug)))
    from library.data.metadata import merge_texts

    merge_texts(Path(args.train_data_dir), Path(args.out_json), Path(args.in_json) if args.in_json else None,
                "caption", args.caption_extention or args.caption_extension, args.full_path, args.recursive)


if __name__ == "__main__":
    sys.exit(run_main(main))

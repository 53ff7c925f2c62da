"""Put each image's caption file into a fine-tuning metadata JSON (sd-scripts' tool and command line).

    python finetune/merge_captions_to_metadata.py train_images/ meta_cap.json [--caption_extension .caption]

Keys are the image stems (`--full_path`: whole paths; needed with `--recursive`). An existing `out_json` (or
`--in_json`) is extended: its entries keep their tags, their captions are replaced. docs/finetune_metadata.md.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import run_main  # noqa: E402
from library.options.tools import parse_tool_args  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args = parse_tool_args("merge_captions_to_metadata", argv)
    from library.data.metadata import merge_texts

    if args.debug:
        logging.getLogger("library.data.metadata").setLevel(logging.DEBUG)
    merge_texts(Path(args.train_data_dir), Path(args.out_json), Path(args.in_json) if args.in_json else None,
                "caption", args.caption_extention or args.caption_extension, args.full_path, args.recursive)


if __name__ == "__main__":
    sys.exit(run_main(main))

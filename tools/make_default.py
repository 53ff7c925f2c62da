"""Write the embedded default: a tiny SD1 checkpoint (seeded random weights, original single-file layout)
and the small procedural sample dataset, both deterministic, into `default/` (or the folder given)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import add_verbosity, run_main, setup_logging  # noqa: E402

log = logging.getLogger("make_default")
CHECKPOINT_NAME = "tiny-sd1.safetensors"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", nargs="?", default="default", help="output folder [default]")
    parser.add_argument("--seed", type=int, default=0)
    add_verbosity(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbosity)
    from library.files import check_output_dir
    from library.models.factory import write_random_checkpoint
    from library.sample_data import make_sample_dataset

    out = check_output_dir(Path(args.out_dir), "out_dir")
    ckpt = out / CHECKPOINT_NAME
    if not ckpt.exists():
        write_random_checkpoint(ckpt, "sd1", "tiny", args.seed)
    log.info("checkpoint: %s", ckpt)
    if not (out / "img").exists():
        make_sample_dataset(out, seed=args.seed)
    log.info("dataset: %s", out / "img")


if __name__ == "__main__":
    sys.exit(run_main(main))

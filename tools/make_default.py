"""Prepare the embedded default in `default/` (or the folder given): the quickstart dataset (the "sks" concept,
an orange ring on varied backgrounds, 16 captioned 64x64 images in `img/10_sks/`) and a check of the shipped
pretrained model against its manifest's sha256. `--random` also writes the seeded random tiny SD1 model
(`tiny-sd1.safetensors`) that tests use for speed. Existing files are kept."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import add_verbosity, run_main, setup_logging  # noqa: E402

log = logging.getLogger("make_default")
RANDOM_NAME = "tiny-sd1.safetensors"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", nargs="?", default="default", help="output folder [default]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dataset and of --random [0]")
    parser.add_argument("--random", action="store_true", help=f"also write the seeded random {RANDOM_NAME}")
    add_verbosity(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbosity)
    from library.default_model import manifest
    from library.default_model.dataset import write_concept_dataset
    from library.files import check_output_dir
    from library.models.factory import write_random_checkpoint

    out = check_output_dir(Path(args.out_dir), "out_dir")
    shipped = manifest.ROOT / manifest.SHIPPED
    digest = manifest.verify(shipped)
    log.info("pretrained model: %s (sha256 %s... matches %s)", shipped, digest[:12], manifest.MANIFEST)
    out.mkdir(parents=True, exist_ok=True)
    target = out / shipped.name
    if target.resolve() != shipped.resolve() and not target.exists():
        shutil.copyfile(shipped, target.with_suffix(".partial"))
        target.with_suffix(".partial").rename(target)
        log.info("copied to %s", target)
    if args.random and not (out / RANDOM_NAME).exists():
        write_random_checkpoint(out / RANDOM_NAME, "sd1", "tiny", args.seed)
        log.info("random tiny model: %s", out / RANDOM_NAME)
    if not (out / "img").exists():
        write_concept_dataset(out, seed=args.seed)
    log.info("dataset: %s", out / "img")


if __name__ == "__main__":
    sys.exit(run_main(main))

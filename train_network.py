"""Train a LoRA / LoCon network for Stable Diffusion 1.x/2.x (sd-scripts' command line and config files).

    python train_network.py --config_file examples/quickstart.toml
    accelerate launch --multi_gpu --num_processes 2 train_network.py --config_file my.toml

Every option is declared in library/options; `-h` lists them with their status.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from library.threads import tune_openmp_waiting, use_huge_pages  # noqa: E402

tune_openmp_waiting()  # before torch starts OpenMP (library/threads.py)
use_huge_pages()  # before torch allocates: checkpoints load faster (library/threads.py)

from library.cli import run_main  # noqa: E402
from library.options.parse import build_parser as _build_parser  # noqa: E402
from library.options.parse import parse_training_args  # noqa: E402
from library.options.parser import OptionParser  # noqa: E402

SCRIPT = "train_network"


def build_parser() -> OptionParser:
    """This script's parser (built from the declarations in library/options)."""
    return _build_parser(SCRIPT)


def main(argv: Sequence[str] | None = None) -> Path | None:
    """Parse the command line and train; returns the final LoRA file (None after --output_config)."""
    cfg = parse_training_args(argv, SCRIPT)
    if cfg is None:
        return None
    from library.train.loop import train  # heavy: only once the work starts

    return train(cfg)


if __name__ == "__main__":
    sys.exit(run_main(main))

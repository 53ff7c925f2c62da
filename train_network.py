"""Train a LoRA / LoCon network for Stable Diffusion 1.x/2.x (sd-scripts' command line and config files).

    python train_network.py --config_file examples/quickstart.toml
    accelerate launch --multi_gpu --num_processes 2 train_network.py --config_file my.toml

Every option is declared in library/options; `-h` lists them with their status.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

# Before torch starts OpenMP: on a busy CPU, spinning worker threads wait on each other (measured 25x slower
# steps on a loaded 2-core machine); passive waiting costs next to nothing on an idle one. Override by setting it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

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

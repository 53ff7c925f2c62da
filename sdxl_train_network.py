"""Train a LoRA / LoCon network for SDXL (sd-scripts' `sdxl_train_network.py` command line and config files).

    python sdxl_train_network.py --pretrained_model_name_or_path sdxl.safetensors --dataset_config data.toml \
        --network_module networks.lora --network_dim 16 --network_train_unet_only \
        --cache_latents --cache_text_encoder_outputs --output_dir out

The same options and trainer as train_network.py (which also trains an SDXL checkpoint); this script refuses
SD1/SD2 models. Every option is declared in library/options; `-h` lists them with their status.
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

SCRIPT = "sdxl_train_network"


def build_parser() -> OptionParser:
    """This script's parser (built from the declarations in library/options)."""
    return _build_parser(SCRIPT)


def main(argv: Sequence[str] | None = None) -> Path | None:
    """Parse the command line and train an SDXL LoRA; returns the final LoRA file (None after --output_config)."""
    cfg = parse_training_args(argv, SCRIPT)
    if cfg is None:
        return None
    from library.train.loop import train  # heavy: only once the work starts

    return train(cfg, sdxl_script=True)


if __name__ == "__main__":
    sys.exit(run_main(main))

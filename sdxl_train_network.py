"""Train a LoRA / LoCon network for SDXL (sd-scripts' `sdxl_train_network.py` command line and config files).

    python sdxl_train_network.py --pretrained_model_name_or_path sdxl.safetensors --dataset_config data.toml \\
        --network_module networks.lora --network_dim 16 --network_train_unet_only \\
        --cache_latents --cache_text_encoder_outputs --output_dir out
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train_network.py
sys.path.insert(0, str(Path(__file__).resolve().parent))

from library.cli import run_main  # noqa: E402
from train_network import main as _train_main  # noqa: E402


def main(argv: Sequence[str] | None = None) -> Path | None:
    """Parse sd-scripts' SDXL command line and train; a non-SDXL model is refused."""
    return _train_main(argv, sdxl=True)


if __name__ == "__main__":
    sys.exit(run_main(main))

"""examples/lora_in_diffusers_pipeline.py on a tiny Diffusers folder: the documented API does what it says."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "examples"))

from lora_helpers import make_lora  # noqa: E402
from lora_in_diffusers_pipeline import main  # noqa: E402

from library.models import save_models  # noqa: E402
from library.models.factory import random_bundle  # noqa: E402


@pytest.fixture()
def one_thread():  # noqa: ANN201
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("kind", "family"), [("diffusers_folder", "sd1"), ("diffusers_folder", "sdxl"),
                                             ("single_file", "sd1")])
def test_example_runs_and_images_agree(kind, family, tiny_checkpoints, tmp_path, one_thread, capsys) -> None:  # noqa: ANN001
    if kind == "diffusers_folder":
        model = tmp_path / f"tiny-{family}"
        save_models(random_bundle(family), model)
    else:
        model = tiny_checkpoints[family]
    lora_file = make_lora(tmp_path / "lora.safetensors", family, strength=0.1)
    out = tmp_path / "demo"
    argv = ["--model", str(model), "--lora", str(lora_file), "--outdir", str(out), "--steps", "2", "--size", "64",
            "--multipliers", "0", "1"]
    if kind == "diffusers_folder":
        argv.append("--compare_diffusers")  # Diffusers' own loader reads the same file to the same image
    diffs = main(argv)
    assert diffs["mul_0 vs no_lora"] == 0
    assert diffs["merged vs mul_1"] <= 2
    if kind == "diffusers_folder":
        assert diffs["diffusers_native vs mul_1"] <= 2
    images = {p.stem: np.asarray(Image.open(p)).astype(int) for p in out.glob("*.png")}
    assert np.abs(images["mul_1"] - images["no_lora"]).mean() > 1.0  # the LoRA does change the picture
    assert "merged vs mul_1: max pixel difference" in capsys.readouterr().out

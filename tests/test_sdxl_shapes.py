"""A tiny SDXL whose hyper-parameters differ from the released ones (time embeddings 40 wide, not 256): the loader
reads them from the tensor shapes, so it trains, samples, and its LoRA runs in Diffusers' own SDXL pipeline."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sdxl_train_network  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_odd_time_embedding_width_trains_samples_and_loads_in_diffusers(tmp_path):
    from library.generate.pipeline import build_pipeline
    from library.models import load_models
    from library.models.factory import write_random_checkpoint
    from library.sample_data import make_sample_dataset

    ckpt = write_random_checkpoint(tmp_path / "xl40.safetensors", "sdxl", time_embed_dim=40)
    bundle = load_models(ckpt)
    assert bundle.unet.config.addition_time_embed_dim == 40
    assert bundle.unet.config.projection_class_embeddings_input_dim == 32 + 6 * 40
    img = make_sample_dataset(tmp_path / "data", num_images=4, resolution=64, seed=0)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sks circle --w 64 --h 64 --s 2 --d 3\n", encoding="utf-8")
    path = sdxl_train_network.main([
        "--pretrained_model_name_or_path", str(ckpt), "--train_data_dir", str(img), "--resolution", "64",
        "--output_dir", str(tmp_path / "out"), "--output_name", "lora", "--max_train_steps", "2",
        "--learning_rate", "5e-2", "--network_dim", "4", "--network_alpha", "4", "--seed", "1",
        "--max_data_loader_n_workers", "0", "--cache_latents", "--network_train_unet_only",
        "--sample_prompts", str(prompts), "--sample_every_n_steps", "2"])
    assert len(list((tmp_path / "out" / "sample").glob("*.png"))) == 1
    sd = load_file(path)
    assert any(k.startswith("lora_unet_") for k in sd)

    pipe = build_pipeline(bundle)
    kwargs = dict(prompt="sks circle", height=64, width=64, num_inference_steps=2, guidance_scale=1.0,
                  output_type="np")
    plain = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(str(path), adapter_name="trained")
    with_lora = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert abs(with_lora - plain).max() > 1e-3  # the LoRA changed what Diffusers' pipeline draws

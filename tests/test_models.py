"""Checkpoint I/O: round trips, layout detection, architecture from shapes, clear errors on bad files."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from library.errors import ToolkitError
from library.files import load_state_dict
from library.keys import checkpoint_targets, detect_family
from library.models import load_models, save_models, to_original_state_dict
from library.models.factory import random_bundle

FAMILIES = ("sd1", "sd2", "sdxl")


@pytest.mark.parametrize("family", FAMILIES)
def test_original_diffusers_original_round_trip_is_identical(family, tiny_checkpoints, tmp_path):
    src, _ = load_state_dict(tiny_checkpoints[family])
    bundle = load_models(tiny_checkpoints[family])
    assert bundle.family == family
    out = to_original_state_dict(bundle)
    assert set(out) == set(src)
    assert all(torch.equal(out[k], src[k]) for k in src)
    # and through a Diffusers folder and back
    save_models(bundle, tmp_path / "diffusers")
    again = to_original_state_dict(load_models(tmp_path / "diffusers"))
    assert set(again) == set(src)
    assert all(torch.equal(again[k], src[k]) for k in src)


@pytest.mark.parametrize("family", FAMILIES)
def test_loaded_models_compute_what_the_source_models_compute(family, tmp_path):
    bundle = random_bundle(family, seed=3)
    save_models(bundle, tmp_path / "m.ckpt")
    loaded = load_models(tmp_path / "m.ckpt")
    torch.manual_seed(0)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    ctx = torch.randn(1, 77, bundle.unet.config.cross_attention_dim)
    kw = {}
    if family == "sdxl":
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 32), "time_ids": torch.randn(1, 6)}
    ids = loaded.tokenizers[0]("a photo of a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(bundle.unet(x, t, ctx, **kw).sample, loaded.unet(x, t, ctx, **kw).sample)
        for a, b in zip(bundle.text_encoders, loaded.text_encoders):
            assert torch.equal(a(ids)[0], b(ids)[0])
        img = torch.rand(1, 3, 64, 64)
        assert torch.equal(bundle.vae.encode(img).latent_dist.mean, loaded.vae.encode(img).latent_dist.mean)


def test_architecture_is_read_from_shapes(tiny_checkpoints):
    sdxl = load_models(tiny_checkpoints["sdxl"])
    assert list(sdxl.unet.config.block_out_channels) == [32, 64, 64]
    assert list(sdxl.unet.config.transformer_layers_per_block) == [1, 1, 2]
    assert sdxl.unet.config.cross_attention_dim == 64
    assert sdxl.unet.config.addition_embed_type == "text_time"
    sd2 = load_models(tiny_checkpoints["sd2"])
    assert sd2.unet.config.use_linear_projection is True
    assert sd2.text_encoders[0].config.hidden_act == "gelu"
    sd1 = load_models(tiny_checkpoints["sd1"])
    assert sd1.unet.config.attention_head_dim == 8
    assert len(sd1.unet.down_blocks) == 4 and sd1.unet.config.layers_per_block == 2


def test_family_detection_and_override(tiny_checkpoints):
    for family, path in tiny_checkpoints.items():
        sd, _ = load_state_dict(path, lazy=True)
        assert detect_family(sd.keys()) == family
    with pytest.raises(ToolkitError, match="tiny-sd1"):
        load_models(tiny_checkpoints["sd1"], family="sdxl")


def test_truncated_safetensors_fails_with_file_name(tiny_checkpoints, tmp_path):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(tiny_checkpoints["sd1"].read_bytes()[:100_000])
    with pytest.raises(ToolkitError, match="cut.safetensors.*truncated"):
        load_models(bad)


def test_pickle_payload_ckpt_is_refused(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("owned",))

    bad = tmp_path / "evil.ckpt"
    with open(bad, "wb") as f:
        pickle.dump({"state_dict": {"x": Payload()}}, f)
    with pytest.raises(ToolkitError, match="evil.ckpt.*refused"):
        load_models(bad)


def test_unknown_layout_fails_and_writes_nothing(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(2, 2)}, bad)
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = subprocess.run([sys.executable, "networks/check_lora_weights.py", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and "other.safetensors" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(ToolkitError, match="other.safetensors.*unknown checkpoint layout"):
        load_models(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not out.exists()


def test_checkpoint_targets_match_the_spec_inventory(tiny_checkpoints):
    for family, n_te in (("sd1", 12), ("sdxl", 24)):
        sd, _ = load_state_dict(tiny_checkpoints[family], lazy=True)
        targets = checkpoint_targets({k: sd.shape(k) for k in sd}, family)
        lierla = [n for n, t in targets.items() if t.group == "lierla"]
        assert sum(n.startswith("lora_unet_") for n in lierla) == 192  # 16 (SD) / 11 (SDXL) attention blocks
        assert sum(n.startswith("lora_te") for n in lierla) == n_te

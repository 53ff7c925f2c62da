"""svd_merge_lora.py on tiny-model LoRAs of different ranks: exact at a large enough rank, the Eckart-Young
error at a smaller one, block weights, metadata and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from library.cli import run_main
from library.files import load_state_dict
from library.lora_io import modules_to_state_dict, save_lora, split_modules
from library.random_lora import random_lora
from networks import svd_merge_lora

RATIOS = (0.8, -0.5, 1.2)


@pytest.fixture(scope="module")
def loras(tiny_checkpoints, tmp_path_factory):  # noqa: ANN001, ANN201
    d = tmp_path_factory.mktemp("svd_merge")
    ckpt = tiny_checkpoints["sd1"]
    mods = [random_lora(ckpt, rank=4, alpha=1.0, conv_rank=3, conv_alpha=3.0, seed=11),
            random_lora(ckpt, rank=6, alpha=3.0, seed=12),
            random_lora(ckpt, rank=8, alpha=16.0, seed=13)]
    paths = []
    for i, m in enumerate(mods):
        paths.append(d / f"l{i}.safetensors")
        save_lora(paths[-1], modules_to_state_dict(m), {"ss_base_model_version": "sd_v1", "ss_v2": "False"})
    return {"dir": d, "mods": mods, "paths": [str(p) for p in paths]}


def summed_delta(mods, name, weights=None):  # noqa: ANN001, ANN201
    """Σ ratio·(alpha/rank)·up@down in float64, as a 2-D matrix."""
    total = 0
    for i, (m, r) in enumerate(zip(mods, RATIOS)):
        if name in m:
            w = 1.0 if weights is None else weights[i]
            total = total + r * w * m[name].delta(torch.float64).flatten(1)
    return total


def run(loras, out, *extra):  # noqa: ANN001, ANN201
    svd_merge_lora.main(["--save_to", str(out), "--models", *loras["paths"],
                         "--ratios", *map(str, RATIOS), *extra])
    return load_state_dict(out)


def test_rank_at_least_the_sum_reproduces_the_summed_delta(loras):  # noqa: ANN001
    sd, meta = run(loras, loras["dir"] / "full.safetensors", "--new_rank", "18", "--new_conv_rank", "3")
    merged = split_modules(sd)
    assert set(merged) == set(loras["mods"][0])
    for name, f in merged.items():
        want = summed_delta(loras["mods"], name)
        got = f.delta(torch.float64).flatten(1)
        assert float((got - want).norm() / want.norm()) < 1e-5, name
        assert f.alpha == f.rank  # scale 1, as sd-scripts writes
        if f.kernel_size == (3, 3):
            assert f.rank == 3 and f.up.shape[2:] == (1, 1)
        else:
            assert f.rank == min(18, *want.shape)
    assert meta["ss_network_dim"] == "18" and meta["ss_network_alpha"] == "18.0"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": 3, "conv_alpha": 3}
    assert meta["modelspec.merged_from"] == "l0, l1, l2"


def test_smaller_rank_meets_the_eckart_young_bound(loras):  # noqa: ANN001
    sd, _ = run(loras, loras["dir"] / "r5.safetensors", "--new_rank", "5", "--new_conv_rank", "2")
    merged = split_modules(sd)
    for name, f in merged.items():
        want = summed_delta(loras["mods"], name)
        k = f.rank
        s = torch.linalg.svdvals(want)
        bound = float(s[k:].norm())  # the error of the best rank-k approximation
        err = float((f.delta(torch.float64).flatten(1) - want).norm())
        # float32 factors add rounding of ~1e-7·|Δ| (visible only where the bound is 0: rank ≤ k)
        assert abs(err - bound) <= 1e-4 * bound + 1e-6 * float(want.norm()), (name, err, bound)


def test_block_weights(loras):  # noqa: ANN001
    # 17 values: BASE, IN01, IN02, IN04, IN05, IN07, IN08, MID, OUT03..OUT11; IN01 = down_blocks_0 attentions_0
    lbw = [0.0, 0.5] + [1.0] * 15
    sd, _ = run(loras, loras["dir"] / "lbw.safetensors", "--new_rank", "18", "--new_conv_rank", "3",
                "--lbws", *[json.dumps(lbw)] * 3)
    merged = split_modules(sd)
    assert not any(n.startswith("lora_te") for n in merged)  # BASE weight 0 drops the text encoder
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    want = summed_delta(loras["mods"], name, weights=[0.5] * 3)
    assert float((merged[name].delta(torch.float64).flatten(1) - want).norm() / want.norm()) < 1e-5


def test_bad_options_fail_without_output(loras, tmp_path, capsys):  # noqa: ANN001
    out = tmp_path / "bad.safetensors"
    assert run_main(svd_merge_lora.main, ["--save_to", str(out), "--models", *loras["paths"], "--ratios", "1"]) == 2
    assert "--ratios" in capsys.readouterr().err
    assert run_main(svd_merge_lora.main, ["--save_to", str(out), "--models", loras["paths"][0], "--lbws", "[1,2]"]) == 2
    assert "17 or 26" in capsys.readouterr().err
    assert run_main(svd_merge_lora.main, ["--save_to", str(out), "--models", loras["paths"][0],
                                          "--lbws", json.dumps([1.0] * 12)]) == 2
    assert "are for SDXL" in capsys.readouterr().err
    assert run_main(svd_merge_lora.main, ["--save_to", str(out), "--models", loras["paths"][0], "--ratios", "0"]) == 2
    assert "would be empty" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("name, sdxl, slot", [
    ("lora_te_text_model_encoder_layers_0_mlp_fc1", False, 0),
    ("lora_unet_down_blocks_1_downsamplers_0_conv", False, 7),  # IN06
    ("lora_unet_up_blocks_2_upsamplers_0_conv", False, 22),  # OUT08
    ("lora_unet_up_blocks_3_attentions_2_proj_in", False, 25),  # OUT11
    ("lora_unet_conv_in", False, None),
    ("lora_te2_text_model_encoder_layers_3_mlp_fc1", True, 0),
    ("lora_unet_input_blocks_4_1_proj_in", True, 5),  # IN04
    ("lora_unet_middle_block_1_proj_out", True, 13),
    ("lora_unet_output_blocks_8_0_skip_connection", True, 22),  # OUT08
])
def test_block_slots(name, sdxl, slot):  # noqa: ANN001
    from library.lbw import block_slot

    assert block_slot(name, sdxl) == slot

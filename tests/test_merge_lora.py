"""merge_lora.py / sdxl_merge_lora.py on tiny models: merges into checkpoints are exact (and equal diffusers'
fuse_lora), LoRA+LoRA --concat is exact, the legacy sum is sd-scripts', and bad inputs fail before writing."""

from __future__ import annotations

import pytest
import torch

from library.cli import run_main
from library.files import load_state_dict
from library.keys import checkpoint_targets
from library.lora_io import LoRAFactors, modules_to_state_dict, save_lora, split_modules
from library.random_lora import random_lora
from networks import merge_lora, sdxl_merge_lora


def write_lora(path, modules, meta=None):  # noqa: ANN001, ANN201
    save_lora(path, modules_to_state_dict(modules), meta or {})
    return path


def expected_merge(ckpt, loras):  # noqa: ANN001, ANN201
    """Base tensors and W + Σ ratio·(alpha/rank)·up@down computed here, module by module, in float32."""
    base, _ = load_state_dict(ckpt)
    shapes = {k: tuple(v.shape) for k, v in base.items()}
    family = "sdxl" if any(k.startswith("conditioner.") for k in base) else (
        "sd2" if any(k.startswith("cond_stage_model.model.") for k in base) else "sd1")
    targets = checkpoint_targets(shapes, family)
    expected = {k: v.float().clone() for k, v in base.items()}
    for modules, ratio in loras:
        for name, f in modules.items():
            t = targets[name]
            part = expected[t.key][t.rows[0]:t.rows[1]] if t.rows else expected[t.key]
            part += ratio * f.delta().reshape(part.shape)
    return base, expected


def max_rel_error(out, expected):  # noqa: ANN001, ANN201
    return max(float((out[k].float() - v).abs().max() / v.abs().max().clamp_min(1e-12)) for k, v in expected.items())


@pytest.fixture(scope="module")
def sd1(tiny_checkpoints, tmp_path_factory):  # noqa: ANN001, ANN201
    d = tmp_path_factory.mktemp("merge_sd1")
    ckpt = tiny_checkpoints["sd1"]
    locon = random_lora(ckpt, rank=4, alpha=2.0, conv_rank=3, conv_alpha=1.0, seed=1)
    plain = random_lora(ckpt, rank=8, alpha=4.0, seed=2)
    same = random_lora(ckpt, rank=8, alpha=8.0, seed=3)
    meta = {"ss_base_model_version": "sd_v1", "ss_v2": "False", "modelspec.title": "plain-title"}
    return {
        "ckpt": ckpt, "dir": d, "locon": locon, "plain": plain, "same": same,
        "locon_path": write_lora(d / "locon.safetensors", locon),
        "plain_path": write_lora(d / "plain.safetensors", plain, meta),
        "same_path": write_lora(d / "same.safetensors", same),
    }


def test_merge_into_sd1_is_exact_for_linear_1x1_and_3x3(sd1):  # noqa: ANN001
    out_path = sd1["dir"] / "merged.safetensors"
    merge_lora.main(["--sd_model", str(sd1["ckpt"]), "--save_to", str(out_path),
                     "--models", str(sd1["locon_path"]), str(sd1["plain_path"]), "--ratios", "0.7", "-0.4"])
    base, expected = expected_merge(sd1["ckpt"], [(sd1["locon"], 0.7), (sd1["plain"], -0.4)])
    out, meta = load_state_dict(out_path)
    assert set(out) == set(base)
    assert max_rel_error(out, expected) < 1e-6
    changed = {k for k in base if not torch.equal(base[k], expected[k])}
    kinds = {(base[k].ndim, base[k].shape[-1] if base[k].ndim == 4 else 0) for k in changed}
    assert {(2, 0), (4, 1), (4, 3)} <= kinds  # Linear, 1x1 conv and 3x3 conv weights all merged
    assert all(torch.equal(out[k], base[k]) for k in base if k not in changed)
    assert meta["modelspec.architecture"] == "stable-diffusion-v1"
    assert meta["modelspec.merged_from"].endswith("locon, plain-title")


def test_merge_equals_diffusers_fuse_lora(sd1):  # noqa: ANN001
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from library.models import load_models

    out_path = sd1["dir"] / "merged_locon.safetensors"
    merge_lora.main(["--sd_model", str(sd1["ckpt"]), "--save_to", str(out_path),
                     "--models", str(sd1["locon_path"]), "--ratios", "0.6"])
    b = load_models(sd1["ckpt"])
    pipe = StableDiffusionPipeline(vae=b.vae, text_encoder=b.text_encoders[0], tokenizer=b.tokenizers[0],
                                   unet=b.unet, scheduler=DDPMScheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(sd1["locon_path"]))
    pipe.fuse_lora(lora_scale=0.6)
    pipe.unload_lora_weights()
    ours = load_models(out_path)
    base = load_models(sd1["ckpt"])
    for theirs, mine, orig in ((pipe.unet, ours.unet, base.unet),
                               (pipe.text_encoder, ours.text_encoders[0], base.text_encoders[0])):
        sa, sb, so = theirs.state_dict(), mine.state_dict(), orig.state_dict()
        assert set(sa) == set(sb)
        fused = [k for k in so if not torch.equal(sa[k], so[k])]
        assert len(fused) > 10  # diffusers really applied the LoRA
        for k in sb:
            assert torch.allclose(sa[k], sb[k], rtol=1e-5, atol=1e-6), k


def test_sd2_squeezes_1x1_and_slices_qkv(tiny_checkpoints, tmp_path):  # noqa: ANN001
    ckpt = tiny_checkpoints["sd2"]
    mods = random_lora(ckpt, rank=4, alpha=4.0, seed=5)
    # files trained on a single-file SD2 hold 4-D 1x1 proj_in/proj_out; this tiny SD2 has Linear ones
    mods = {n: (LoRAFactors(f.down[:, :, None, None], f.up[:, :, None, None], f.alpha) if n.endswith(("proj_in",
            "proj_out")) else f) for n, f in mods.items()}
    assert any(f.down.ndim == 4 for f in mods.values())
    lora = write_lora(tmp_path / "sd2.safetensors", mods)
    out_path = tmp_path / "merged.safetensors"
    merge_lora.main(["--v2", "--sd_model", str(ckpt), "--save_to", str(out_path), "--models", str(lora),
                     "--ratios", "1.5"])
    _, expected = expected_merge(ckpt, [(mods, 1.5)])
    out, meta = load_state_dict(out_path)
    assert max_rel_error(out, expected) < 1e-6
    assert meta["modelspec.prediction_type"] == "v"


def test_sd1_unsqueezes_linear_lora_onto_1x1_conv(sd1, tmp_path):  # noqa: ANN001
    mods = {n: LoRAFactors(f.down.flatten(1), f.up.flatten(1), f.alpha) for n, f in sd1["plain"].items()
            if n.endswith("proj_in")}
    lora = write_lora(tmp_path / "flat.safetensors", mods)
    merge_lora.main(["--sd_model", str(sd1["ckpt"]), "--save_to", str(tmp_path / "merged.ckpt"), "--models", str(lora)])
    _, expected = expected_merge(sd1["ckpt"], [(mods, 1.0)])
    assert max_rel_error(load_state_dict(tmp_path / "merged.ckpt")[0], expected) < 1e-6
    assert "epoch" in torch.load(tmp_path / "merged.ckpt", weights_only=True)  # .ckpt output: torch.save format


def test_sdxl_merge_te1_te2_unet(tiny_checkpoints, tmp_path):  # noqa: ANN001
    ckpt = tiny_checkpoints["sdxl"]
    mods = random_lora(ckpt, rank=4, alpha=1.0, conv_rank=2, seed=7)
    assert {n.split("_")[1] for n in mods} == {"te1", "te2", "unet"}
    lora = write_lora(tmp_path / "xl.safetensors", mods)
    out_path = tmp_path / "merged.safetensors"
    sdxl_merge_lora.main(["--sd_model", str(ckpt), "--save_to", str(out_path), "--models", str(lora),
                          "--ratios", "0.8", "--save_precision", "float"])
    _, expected = expected_merge(ckpt, [(mods, 0.8)])
    out, meta = load_state_dict(out_path)
    assert max_rel_error(out, expected) < 1e-6
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"


def test_save_precision_and_lbws(sd1, tmp_path):  # noqa: ANN001
    out_path = tmp_path / "half.safetensors"
    lbw = "[0," + ",".join(["1"] * 16) + "]"  # BASE (text encoder) off, every U-Net block on
    merge_lora.main(["--sd_model", str(sd1["ckpt"]), "--save_to", str(out_path), "--models", str(sd1["plain_path"]),
                     "--save_precision", "fp16", "--lbws", lbw])
    base, expected = expected_merge(sd1["ckpt"], [({n: f for n, f in sd1["plain"].items()
                                                    if n.startswith("lora_unet")}, 1.0)])
    out, _ = load_state_dict(out_path)
    assert all(v.dtype == torch.float16 for v in out.values() if v.is_floating_point())
    assert max_rel_error(out, expected) < 1e-3
    te_keys = [k for k in base if k.startswith("cond_stage_model.")]
    assert all(torch.equal(out[k], base[k].half()) for k in te_keys)


def test_concat_is_exact_and_shuffle_keeps_the_delta(sd1, tmp_path):  # noqa: ANN001
    for extra in ([], ["--shuffle"]):
        out_path = tmp_path / f"concat{len(extra)}.safetensors"
        merge_lora.main(["--save_to", str(out_path), "--models", str(sd1["locon_path"]), str(sd1["plain_path"]),
                         "--ratios", "0.7", "-0.4", "--concat", *extra])
        sd, meta = load_state_dict(out_path)
        merged = split_modules(sd)
        assert set(merged) == set(sd1["locon"])
        for n, f in merged.items():
            want = 0.7 * sd1["locon"][n].delta()
            if n in sd1["plain"]:
                want = want - 0.4 * sd1["plain"][n].delta()
                assert f.rank == 12
            assert float((f.delta() - want).norm() / want.norm()) < 1e-5, n
        assert meta["ss_network_dim"] == "Dynamic" and meta["ss_base_model_version"] == "sd_v1"
        assert "sshs_model_hash" in meta and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    plain, shuffled = (split_modules(load_state_dict(tmp_path / f"concat{i}.safetensors")[0]) for i in (0, 1))
    assert any(not torch.equal(plain[n].down, shuffled[n].down) for n in plain)


def test_sum_mode_is_sd_scripts_and_warns(sd1, tmp_path, capfd):  # noqa: ANN001
    out_path = tmp_path / "sum.safetensors"
    merge_lora.main(["--save_to", str(out_path), "--models", str(sd1["plain_path"]), str(sd1["same_path"]),
                     "--ratios", "0.5", "-0.8"])
    assert "cross terms" in capfd.readouterr().err
    merged = split_modules(load_state_dict(out_path)[0])
    n = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    a, b = sd1["plain"][n], sd1["same"][n]
    s_a, s_b = 0.5, (b.alpha / a.alpha) ** 0.5 * -0.8
    assert torch.allclose(merged[n].up, abs(s_a) * a.up + abs(s_b) * b.up, atol=1e-6)
    assert torch.allclose(merged[n].down, s_a * a.down + s_b * b.down, atol=1e-6)
    assert merged[n].alpha == a.alpha


def _run_fails(argv, out_path, capsys, main=merge_lora.main):  # noqa: ANN001, ANN202
    out_path.write_bytes(b"keep")
    assert run_main(main, argv) == 2
    assert out_path.read_bytes() == b"keep"  # an existing file is never clobbered by a failed run
    return capsys.readouterr().err


def test_mismatched_inputs_fail_clearly(sd1, tiny_checkpoints, tmp_path, capsys):  # noqa: ANN001
    out = tmp_path / "out.safetensors"
    xl = write_lora(tmp_path / "xl.safetensors", random_lora(tiny_checkpoints["sdxl"], rank=2, seed=9))
    err = _run_fails(["--sd_model", str(sd1["ckpt"]), "--save_to", str(out), "--models", str(xl)], out, capsys)
    assert "SDXL LoRA cannot be merged" in err
    err = _run_fails(["--sd_model", str(sd1["ckpt"]), "--save_to", str(out), "--models", str(sd1["plain_path"]),
                      str(sd1["same_path"]), "--ratios", "1"], out, capsys)
    assert "--ratios: 1 ratios for 2 models" in err
    err = _run_fails(["--save_to", str(out), "--models", str(sd1["locon_path"]), str(sd1["plain_path"])], out, capsys)
    assert "different ranks" in err and "--concat" in err
    err = _run_fails(["--sd_model", str(tiny_checkpoints["sd2"]), "--save_to", str(out), "--models",
                      str(sd1["plain_path"])], out, capsys)
    assert "metadata says it is for SD1.x" in err
    odd = dict(sd1["same"])
    n = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"
    odd[n] = LoRAFactors(torch.zeros(8, 48), odd[n].up, 8.0)  # cross-attention width of another model
    odd_path = write_lora(tmp_path / "odd.safetensors", odd)
    err = _run_fails(["--sd_model", str(sd1["ckpt"]), "--save_to", str(out), "--models", str(odd_path)], out, capsys)
    assert "another base model" in err and n in err
    err = _run_fails(["--sd_model", str(tiny_checkpoints["sdxl"]), "--save_to", str(out), "--models",
                      str(sd1["plain_path"])], out, capsys, sdxl_merge_lora.main)
    assert "SD1/SD2 LoRA cannot be merged into the SDXL model" in err
    err = _run_fails(["--save_to", str(out), "--models", str(sd1["plain_path"]), str(xl), "--concat"], out, capsys)
    assert "different model families" in err
    err = _run_fails(["--save_to", str(out), "--models", str(sd1["ckpt"])], out, capsys)
    assert "not a LoRA file" in err
    assert not list(tmp_path.glob(".*.tmp*"))

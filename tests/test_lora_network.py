"""networks.lora: kohya names load completely and exactly in diffusers; apply == merge; multiplier 0 == base."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from library.files import read_metadata
from library.keys import checkpoint_targets
from library.lora_io import load_lora, split_modules
from library.models import load_models, to_original_state_dict
from networks import lora


def _network(bundle, conv: bool, seed: int = 0, dim: int = 4, alpha: float = 2.0):
    te = bundle.text_encoders if bundle.is_sdxl else bundle.text_encoders[0]
    kwargs = {"conv_dim": 3, "conv_alpha": 1.5} if conv else {}
    net = lora.create_network(1.0, dim, alpha, bundle.vae, te, bundle.unet, **kwargs)
    net.apply_to(te, bundle.unet)
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in net.text_encoder_loras + net.unet_loras:
            m.lora_up.weight.normal_(0, 0.05)  # trained-looking factors: up starts at zero
    return net, te


def _pipeline(bundle):
    from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    if bundle.is_sdxl:
        return StableDiffusionXLPipeline(vae=bundle.vae, text_encoder=bundle.text_encoders[0],
                                         text_encoder_2=bundle.text_encoders[1], tokenizer=bundle.tokenizers[0],
                                         tokenizer_2=bundle.tokenizers[1], unet=bundle.unet, scheduler=sched)
    return StableDiffusionPipeline(vae=bundle.vae, text_encoder=bundle.text_encoders[0], tokenizer=bundle.tokenizers[0],
                                   unet=bundle.unet, scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@pytest.mark.parametrize("family,conv", [("sd1", False), ("sd1", True), ("sdxl", False), ("sdxl", True)])
def test_diffusers_loads_every_module_with_exact_deltas(family, conv, tiny_checkpoints, tmp_path):
    path = tmp_path / "lora.safetensors"
    bundle = load_models(tiny_checkpoints[family])
    net, _ = _network(bundle, conv)
    net.save_weights(path, torch.float32, {"ss_network_module": "networks.lora"})
    assert read_metadata(path)["sshs_model_hash"]

    base = load_models(tiny_checkpoints[family])
    before = {k: v.clone() for k, v in to_original_state_dict(base).items()}
    pipe = _pipeline(base)
    multiplier = 0.7
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(lora_scale=multiplier)
    pipe.unload_lora_weights()
    after = to_original_state_dict(base)

    sd, _ = load_lora(path)
    modules = split_modules(sd)
    targets = checkpoint_targets({k: tuple(v.shape) for k, v in before.items()}, family)
    assert set(modules) <= set(targets)
    changed_keys = {k for k in before if not torch.equal(before[k], after[k])}
    expected_keys = {targets[n].key for n in modules}
    assert changed_keys == expected_keys  # every module applied, nothing else touched
    for name, m in modules.items():
        t = targets[name]
        expected = m.delta() * multiplier
        got = after[t.key].float() - before[t.key].float()
        if t.rows:
            got = got[t.rows[0]:t.rows[1]]
        expected = expected.reshape(got.shape)
        rel = (got - expected).norm() / expected.norm()
        assert rel < 1e-4, (name, float(rel))


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_apply_and_merge_give_the_same_output_and_zero_multiplier_is_base(family, tiny_checkpoints):
    bundle = load_models(tiny_checkpoints[family])
    base_unet = copy.deepcopy(bundle.unet)
    net, te = _network(bundle, conv=True, seed=1)
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 700])
    ctx = torch.randn(2, 77, bundle.unet.config.cross_attention_dim)
    kw = {}
    if family == "sdxl":
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 32), "time_ids": torch.randn(2, 6)}
    with torch.no_grad():
        base = base_unet(x, t, ctx, **kw).sample
        net.set_multiplier(0.0)
        assert torch.equal(bundle.unet(x, t, ctx, **kw).sample, base)
        net.set_multiplier(0.8)
        applied = bundle.unet(x, t, ctx, **kw).sample
        assert (applied - base).abs().max() > 1e-3  # the LoRA does something
        net.merge_to(te, bundle.unet, net.state_dict(), torch.float32, "cpu")
        merged = bundle.unet(x, t, ctx, **kw).sample
    assert torch.allclose(applied, merged, atol=1e-5, rtol=1e-4)


def test_dropouts_only_in_training_and_rank_dropout_rescales(tiny_checkpoints):
    bundle = load_models(tiny_checkpoints["sd1"])
    te = bundle.text_encoders[0]
    net = lora.create_network(1.0, 4, 4, bundle.vae, te, bundle.unet, neuron_dropout=0.5, rank_dropout=0.5,
                              module_dropout=0.3)
    net.apply_to(te, bundle.unet)
    m = net.unet_loras[0]
    assert (m.dropout, m.rank_dropout, m.module_dropout) == (0.5, 0.5, 0.3)
    with torch.no_grad():
        m.lora_up.weight.normal_()
    x = torch.randn(1, 32, 4, 4) if isinstance(m.lora_down, torch.nn.Conv2d) else torch.randn(1, 5, m.lora_down.in_features)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    outs = {m(x).sum().item() for _ in range(6)}
    assert len(outs) > 1


def test_create_network_from_weights_rebuilds_ranks_and_alphas(tiny_checkpoints, tmp_path):
    bundle = load_models(tiny_checkpoints["sd1"])
    net, te = _network(bundle, conv=True, dim=6, alpha=3.0)
    net.save_weights(tmp_path / "a.safetensors", torch.float16, {})
    fresh = load_models(tiny_checkpoints["sd1"])
    net2, sd = lora.create_network_from_weights(1.0, tmp_path / "a.safetensors", fresh.vae, fresh.text_encoders[0],
                                                fresh.unet, for_inference=True)
    net2.apply_to(fresh.text_encoders[0], fresh.unet)
    result = net2.load_state_dict(sd)
    assert not result.missing_keys and not result.unexpected_keys
    assert {m.lora_name: (m.lora_dim, float(m.alpha)) for m in net2.unet_loras} == \
        {m.lora_name: (m.lora_dim, float(m.alpha)) for m in net.unet_loras}
    assert sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].dtype == torch.float16


def test_optimizer_groups_and_train_unet_only(tiny_checkpoints):
    bundle = load_models(tiny_checkpoints["sd1"])
    te = bundle.text_encoders[0]
    net = lora.create_network(1.0, 4, 1, bundle.vae, te, bundle.unet, loraplus_lr_ratio="4")
    net.apply_to(te, bundle.unet, apply_text_encoder=False)
    groups, desc = net.prepare_optimizer_params(5e-5, 1e-4, 1e-3)
    assert desc == ["unet", "unet plus"] and [g["lr"] for g in groups] == [1e-4, 4e-4]
    assert all(k.startswith("lora_unet_") for k in net.state_dict())


def test_check_lora_weights_reports_and_flags(tiny_checkpoints, tmp_path):
    from safetensors.torch import save_file

    from library.files import read_metadata
    from library.lora_io import save_lora

    bundle = load_models(tiny_checkpoints["sd1"])
    net, _ = _network(bundle, conv=False)
    sd = net.state_dict()
    name = next(iter(sd)).split(".")[0]
    sd[f"{name}.lora_up.weight"] = torch.zeros_like(sd[f"{name}.lora_up.weight"])
    save_lora(tmp_path / "ok.safetensors", sd)
    proc = subprocess.run([sys.executable, "networks/check_lora_weights.py", str(tmp_path / "ok.safetensors")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "number of LoRA modules: 204" in proc.stdout
    assert "summary: 204 modules, 1 all-zero tensors, 0 tensors with NaN/Inf" in proc.stdout
    sd[f"{name}.lora_down.weight"][0, 0] = float("nan")
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "bad.safetensors",  # save_lora refuses NaN
              read_metadata(tmp_path / "ok.safetensors"))
    proc = subprocess.run([sys.executable, "networks/check_lora_weights.py", str(tmp_path / "bad.safetensors"), "-s"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "1 tensors with NaN/Inf" in proc.stdout and "sshs_model_hash" in proc.stdout

"""networks.dylora and extract_lora_from_dylora on the tiny SD1 model; the DyLoRA is trained by train_network.py
(`--network_module networks.dylora --network_args unit=4`) as a user would."""

from __future__ import annotations

import copy
import json
import logging
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import train_network
from library.cli import run_main
from library.errors import ToolkitError
from library.files import read_metadata
from library.lora_io import load_lora, precalculate_hashes, save_lora, split_modules
from library.models import load_models
from library.models.factory import random_bundle, write_random_checkpoint
from library.sample_data import make_sample_dataset
from networks import dylora, extract_lora_from_dylora, lora
from networks.lora import LoRAModule

DIM, UNIT, ALPHA, STEPS, LR = 16, 4, 16.0, 32, 1e-2


def _encode_dataset(bundle, img):
    """Latents and text-encoder states of the sample images (64x64) and their captions."""
    files = sorted(img.rglob("*.png"))
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])
    captions = [f.with_suffix(".caption").read_text().strip() for f in files]
    with torch.no_grad():
        latents = bundle.vae.encode(pixels.float() / 127.5 - 1).latent_dist.mean * bundle.vae.config.scaling_factor
        ids = bundle.tokenizers[0](captions, padding="max_length", max_length=77, truncation=True,
                                   return_tensors="pt").input_ids
        context = bundle.text_encoders[0](ids).last_hidden_state
    return latents, context


def _scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)


@pytest.fixture(autouse=True)
def _keep_logging():
    """The scripts' main() sets up logging on the current stderr; put pytest's handlers back afterwards."""
    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


@pytest.fixture(scope="module")
def sd1():
    """A tiny SD1 bundle for tests that build networks without applying them."""
    return random_bundle("sd1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A DyLoRA (dim 16, unit 4, U-Net only) trained STEPS steps by train_network.py, split with the CLI."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is overhead-bound; more threads only contend on 2 cores
    try:
        folder = tmp_path_factory.mktemp("dylora")
        ckpt = write_random_checkpoint(folder / "tiny-sd1.safetensors", "sd1")
        img = make_sample_dataset(folder / "data", num_images=12, resolution=64, aspect_ratios=False)
        model = train_network.main([
            "--pretrained_model_name_or_path", str(ckpt), "--train_data_dir", str(img), "--resolution", "64",
            "--output_dir", str(folder), "--output_name", "dy", "--max_train_steps", str(STEPS),
            "--learning_rate", str(LR), "--train_batch_size", "4", "--cache_latents", "--seed", "0",
            "--max_data_loader_n_workers", "0", "--network_train_unet_only", "--training_comment", "tiny test",
            "--network_module", "networks.dylora", "--network_dim", str(DIM), "--network_alpha", str(ALPHA),
            "--network_args", f"unit={UNIT}"])
        outputs = extract_lora_from_dylora.main(["--model", str(model),
                                                 "--save_to", str(folder / "split" / "dy.safetensors")])
        bundle = load_models(ckpt)
        latents, context = _encode_dataset(bundle, img)
        # a fixed evaluation set over the training images: 4 noise draws per image
        gen = torch.Generator().manual_seed(123)
        lat, ctx = latents.repeat(4, 1, 1, 1), context.repeat(4, 1, 1)
        noise = torch.randn(lat.shape, generator=gen)
        t = torch.randint(0, 1000, (len(lat),), generator=gen)
        evalset = (_scheduler().add_noise(lat, noise, t), t, ctx, noise)
        yield SimpleNamespace(model=model, base=bundle.unet, outputs=outputs, evalset=evalset)
    finally:
        torch.set_num_threads(threads)


def _loss(unet, evalset) -> float:
    noisy, t, ctx, noise = evalset
    with torch.no_grad():
        return float(nn.functional.mse_loss(unet(noisy, t, ctx).sample, noise))


def _loss_with_file(base, path, evalset) -> float:
    """Training-set loss with one LoRA file applied alone through networks.lora (an ordinary loader)."""
    unet = copy.deepcopy(base)
    net, sd = lora.create_network_from_weights(1.0, path, None, None, unet)
    net.apply_to(None, unet)
    result = net.load_state_dict(sd)
    assert not result.missing_keys and not result.unexpected_keys
    net.eval()
    return _loss(unet, evalset)


def test_split_ranks_are_exact_prefixes_and_loss_falls_as_rank_grows(trained):
    names = [p.name for p in trained.outputs]
    assert names == ["dy-0004.safetensors", "dy-0008.safetensors", "dy-0012.safetensors"]  # full rank not rewritten
    full_sd, _ = load_lora(trained.model)
    full = split_modules(full_sd)
    assert {m.rank for m in full.values()} == {DIM} and all(k.startswith("lora_unet_") for k in full)
    trained_units = {i for m in full.values() for i, u in enumerate(m.up2d().split(UNIT, dim=1)) if u.any()}
    assert trained_units == set(range(DIM // UNIT))  # up starts at zero: every unit was drawn and trained
    losses = {"base": _loss(trained.base, trained.evalset)}
    for rank, path in zip((4, 8, 12, 16), [*trained.outputs, trained.model]):
        modules = split_modules(load_lora(path)[0])
        assert modules.keys() == full.keys()
        for name, m in modules.items():
            assert torch.equal(m.down, full[name].down[:rank])  # exactly the first k units of the trained factors
            assert torch.equal(m.up, full[name].up[:, :rank])
            assert m.alpha == ALPHA * rank / DIM  # the scale alpha/dim that training used at every rank
        losses[rank] = _loss_with_file(trained.base, path, trained.evalset)
        unet = copy.deepcopy(trained.base)  # the same truncation inside a DyLoRA network
        net, sd = dylora.create_network_from_weights(1.0, trained.model, None, None, unet, unit=str(UNIT))
        net.apply_to(None, unet)
        net.load_state_dict(sd)
        net.eval()
        net.set_rank(rank)
        assert _loss(unet, trained.evalset) == pytest.approx(losses[rank], rel=1e-5)
    assert losses["base"] > losses[4] > losses[8] > losses[12] > losses[16], losses


def test_split_metadata_and_hashes(trained):
    source = read_metadata(trained.model)
    assert source["ss_dylora_rank_scale"] == "constant"
    hashes = set()
    for rank, path in zip((4, 8, 12), trained.outputs):
        meta = read_metadata(path)
        assert meta["ss_network_dim"] == str(rank)
        assert meta["ss_network_alpha"] == str(ALPHA * rank / DIM)
        assert meta["ss_training_comment"] == f"split from DyLoRA, rank {DIM} to {rank}; tiny test"
        assert meta["ss_network_module"] == "networks.dylora" and json.loads(meta["ss_network_args"])["unit"] == "4"
        assert "ss_dylora_rank_scale" not in meta
        sd, _ = load_lora(path)
        assert (meta["sshs_model_hash"], meta["sshs_legacy_hash"]) == precalculate_hashes(sd, meta)
        hashes.add(meta["sshs_model_hash"])
    assert len(hashes) == 3 and source["sshs_model_hash"] not in hashes


def test_split_cli_on_a_file_without_metadata(trained, tmp_path, capsys):
    sd, _ = load_lora(trained.model)
    save_lora(tmp_path / "dy.pt", sd)  # torch.save: no metadata at all
    assert run_main(extract_lora_from_dylora.main, ["--model", str(tmp_path / "dy.pt"),
                                                    "--save_to", str(tmp_path / "out")]) == 2
    assert "--unit is needed" in capsys.readouterr().err
    assert run_main(extract_lora_from_dylora.main, ["--model", str(tmp_path / "dy.pt"), "--unit", "16",
                                                    "--save_to", str(tmp_path / "out.pt")]) == 2
    assert "nothing to split" in capsys.readouterr().err
    assert not list(tmp_path.glob("out*"))
    written = extract_lora_from_dylora.main(["--model", str(tmp_path / "dy.pt"), "--unit", "8",
                                             "--save_to", str(tmp_path / "out.pt")])
    assert [p.name for p in written] == ["out-0008.pt"]
    part = split_modules(load_lora(written[0])[0])
    full = split_modules(sd)
    for name, m in part.items():
        assert torch.equal(m.down, full[name].down[:8]) and torch.equal(m.up, full[name].up[:, :8])
        assert m.alpha == ALPHA  # no mark in the file: alpha kept, as sd-scripts does
    written = extract_lora_from_dylora.main(["--model", str(tmp_path / "dy.pt"), "--unit", "8", "--alpha", "scale",
                                             "--save_to", str(tmp_path / "scaled")])
    assert written[0].name == "scaled-0008.safetensors"
    assert {m.alpha for m in split_modules(load_lora(written[0])[0]).values()} == {ALPHA / 2}


def _module(layer: nn.Module, seed: int = 0) -> dylora.DyLoRAModule:
    torch.manual_seed(seed)
    m = dylora.DyLoRAModule("lora_test", layer, 1.0, DIM, ALPHA / 2, UNIT)
    with torch.no_grad():
        for p in m.lora_up:
            p.normal_()
    m.apply_to()
    return m


@pytest.mark.parametrize("layer", [nn.Linear(6, 5), nn.Conv2d(6, 5, 1), nn.Conv2d(6, 5, 3, stride=2, padding=1)])
def test_training_uses_the_first_units_and_only_the_newest_gets_gradients(layer):
    pristine = copy.deepcopy(layer)
    m = _module(layer)
    x = torch.randn(2, 6, 7, 7) if isinstance(layer, nn.Conv2d) else torch.randn(2, 3, 6)
    down, up = m.lora_down.weight.detach(), m.lora_up.weight.detach()
    m.train()
    m.trained_unit = 1  # ranks [0, 8) in the product, ranks [4, 8) trained
    out = layer(x)
    k = 2 * UNIT
    expected = m.org_forward(x) + _apply(layer, x, down[:k], up[:, :k]) * (ALPHA / 2 / DIM)
    assert torch.allclose(out, expected, atol=1e-5)
    out.square().sum().backward()
    assert [p.grad is not None for p in m.lora_down] == [False, True, False, False]
    assert [p.grad is not None for p in m.lora_up] == [False, True, False, False]
    with torch.no_grad():
        m.lora_down[3].add_(1.0)  # units past the drawn rank do not take part
        assert torch.equal(layer(x), out.detach())
        m.eval()  # out of training: the full rank, deterministically, as the saved file
        full = layer(x)
        assert torch.equal(full, layer(x))
        plain = LoRAModule("plain", pristine, 1.0, DIM, ALPHA / 2)  # networks.lora with the same factors
        plain.lora_down.weight.copy_(m.lora_down.weight)
        plain.lora_up.weight.copy_(m.lora_up.weight)
        plain.apply_to()
        assert torch.allclose(pristine(x), full, atol=1e-5)


def _apply(layer, x, down, up):
    if isinstance(layer, nn.Conv2d):
        return nn.functional.conv2d(nn.functional.conv2d(x, down, stride=layer.stride, padding=layer.padding), up)
    return x @ down.T @ up.T


def test_one_rank_per_step_for_text_encoder_and_unet_and_none_in_eval():
    bundle = random_bundle("sd1")
    te, unet = bundle.text_encoders[0], bundle.unet
    net = dylora.create_network(1.0, 8, 8, bundle.vae, te, unet, unit="2")
    net.apply_to(te, unet)
    calls = []
    draw = net.draw_rank
    net.draw_rank = lambda *a: calls.append(draw(*a))
    ids = torch.randint(0, 1000, (1, 77))
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    net.train()
    random.seed(3)
    for _ in range(3):  # a step: text encoder, then U-Net, share one draw
        ctx = te(ids).last_hidden_state
        unet(x, t, ctx)
        assert len({m.trained_unit for m in net.text_encoder_loras + net.unet_loras}) == 1
    assert len(calls) == 3
    unet(x, t, ctx)  # U-Net-only steps draw at the U-Net
    unet(x, t, ctx)
    assert len(calls) == 5
    net.eval()
    with torch.no_grad():
        a = unet(x, t, te(ids).last_hidden_state).sample
        b = unet(x, t, te(ids).last_hidden_state).sample
    assert len(calls) == 5 and torch.equal(a, b)
    net.remove_from()


def test_gradient_checkpointing_recomputes_with_the_same_rank():
    bundle = random_bundle("sd1")
    unet = bundle.unet
    net = dylora.create_network(1.0, 8, 8, None, None, unet, unit="2")
    net.apply_to(None, unet)
    with torch.no_grad():
        for m in net.unet_loras:
            for p in m.lora_up:
                p.normal_(0, 0.1)
    net.train()
    unet.train()
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([10, 700]), torch.randn(2, 77, 32)

    def grads():
        random.seed(7)
        unet(x, t, ctx).sample.square().mean().backward()
        out = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        net.zero_grad(set_to_none=True)
        return out

    plain = grads()
    unet.enable_gradient_checkpointing()
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and len({n.split(".")[-1] for n in plain}) == 1  # one unit trained
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-6) for n in plain)


def test_file_is_an_ordinary_lora_and_round_trips(tmp_path):
    bundle = random_bundle("sd1")
    te, unet = bundle.text_encoders[0], bundle.unet
    net = dylora.create_network(1.0, 8, 4, bundle.vae, te, unet, unit="4", conv_dim="8")
    net.apply_to(te, unet)
    with torch.no_grad():
        for m in net.text_encoder_loras + net.unet_loras:
            for p in m.lora_up:
                p.normal_(0, 0.05)
    net.save_weights(tmp_path / "dy.safetensors", torch.float16, {})
    sd, _ = load_lora(tmp_path / "dy.safetensors")
    ref = lora.create_network(1.0, 8, 4, None, te, unet, conv_dim="8", conv_alpha="4")
    ref_sd = {}
    for m in ref.text_encoder_loras + ref.unet_loras:
        ref_sd.update({f"{m.lora_name}.{k}": v for k, v in m.state_dict().items()})
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in ref_sd.items()}
    assert all(v.dtype == torch.float16 for v in sd.values())
    assert sd["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].ndim == 4  # 1x1 conv stays 4-D

    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([10, 700]), torch.randn(2, 77, 32)
    net.eval()
    with torch.no_grad():
        net.load_state_dict(sd)  # the fp16-rounded weights, so both sides compute the same thing
        ours = unet(x, t, ctx).sample
    net.remove_from()
    fresh = random_bundle("sd1")
    again, weights = dylora.create_network_from_weights(1.0, tmp_path / "dy.safetensors", None,
                                                        fresh.text_encoders[0], fresh.unet, unit="4")
    again.apply_to(fresh.text_encoders[0], fresh.unet)
    result = again.load_state_dict(weights)
    assert not result.missing_keys and not result.unexpected_keys
    again.eval()
    with torch.no_grad():
        assert torch.allclose(fresh.unet(x, t, ctx).sample, ours, atol=1e-5)
        again.merge_to(fresh.text_encoders[0], fresh.unet, weights, torch.float32, "cpu")
        assert torch.allclose(fresh.unet(x, t, ctx).sample, ours, atol=1e-4)
    scaled, _, biggest = again.apply_max_norm_regularization(1e-3)
    assert scaled > 0 and biggest <= 1e-3 + 1e-7


def test_sdxl_text_encoders_get_distinct_names():
    bundle = random_bundle("sdxl")
    net = dylora.create_network(1.0, 4, 1, bundle.vae, bundle.text_encoders, bundle.unet, unit="2")
    prefixes = {m.lora_name.split("_text_model")[0] for m in net.text_encoder_loras}
    assert prefixes == {"lora_te1", "lora_te2"}
    assert all(m.lora_name.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"))
               for m in net.unet_loras)  # SDXL U-Net names use the original (SAI) paths


@pytest.mark.parametrize("dim,args,message", [
    (8, {"conv_dim": "4"}, "conv_dim (4) must equal network_dim (8)"),
    (8, {"unit": "3"}, "network_dim 8 is not a multiple of network_args unit=3"),
    (8, {"unit": "0"}, "unit=0: must be 1 or more"),
    (8, {"unit": "two"}, "unit='two': expected a whole number"),
    (8, {"down_lr_weight": "sine"}, "no block-wise settings (down_lr_weight)"),
    (8, {"block_dims": ",".join(["4"] * 25)}, "no block-wise settings (block_dims)"),
])
def test_bad_arguments_give_clear_errors(sd1, dim, args, message):
    with pytest.raises(ToolkitError) as err:
        dylora.create_network(1.0, dim, 1, None, sd1.text_encoders[0], sd1.unet, **args)
    assert message in str(err.value)


def test_set_rank_checks_the_unit(sd1):
    net = dylora.create_network(1.0, 8, 1, None, sd1.text_encoders[0], sd1.unet, unit="4")
    with pytest.raises(ToolkitError, match="not a positive multiple of unit=4"):
        net.set_rank(6)

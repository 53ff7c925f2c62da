"""networks/convert_lora.py: kohya <-> Diffusers <-> PEFT, checked against the real loaders (diffusers, peft,
networks.lora) on tiny models: names, ranks, alphas and every module's ΔW."""

from __future__ import annotations

import json

import pytest
import torch

from library.cli import run_main
from library.files import load_state_dict, read_metadata
from library.keys import lora_formats as lf
from library.lora_io import LoRAFactors, modules_to_state_dict, save_lora, split_modules
from library.models.factory import random_bundle
from networks import convert_lora, lora

FAMILIES = ("sd1", "sd2", "sdxl")


def _te_arg(bundle):  # noqa: ANN001, ANN202
    return bundle.text_encoders if bundle.is_sdxl else bundle.text_encoders[0]


def make_locon(path, family, seed=0, vary_alpha=True):  # noqa: ANN001, ANN201
    """A LoCon (3x3 convs, resnet Linear/1x1) with random factors, some modules at other ranks (and alphas)."""
    bundle = random_bundle(family)
    network = lora.create_network(1.0, 4, 2.0, bundle.vae, _te_arg(bundle), bundle.unet, conv_dim=2, conv_alpha=1)
    network.apply_to(_te_arg(bundle), bundle.unet)
    g = torch.Generator().manual_seed(seed)
    modules = {}
    for i, (name, m) in enumerate(sorted(split_modules(network.state_dict()).items())):
        up = torch.randn(m.up.shape, generator=g) * 0.1
        down, alpha = m.down, m.alpha
        if i % 7 == 3:  # per-module rank and alpha, as dynamic resizes write them
            up, down = up[:, :1].contiguous(), down[:1].contiguous()
            alpha = 0.25 * (1 + i % 3) if vary_alpha else alpha
        modules[name] = LoRAFactors(down, up, alpha)
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_training_comment": "round trip",
            "ss_base_model_version": {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}[family]}
    save_lora(path, modules_to_state_dict(modules), meta)
    return path


@pytest.fixture(scope="module")
def locons(tmp_path_factory):  # noqa: ANN001, ANN201
    """make_locon per (family, vary_alpha), built once for the module; tests only read these files."""
    folder, made = tmp_path_factory.mktemp("locon"), {}

    def get(family, vary_alpha=True):  # noqa: ANN001, ANN202
        key = (family, vary_alpha)
        if key not in made:
            made[key] = make_locon(folder / f"{family}-{vary_alpha}.safetensors", family, vary_alpha=vary_alpha)
        return made[key]

    return get


def read_kohya(path):  # noqa: ANN001, ANN201
    sd, meta = load_state_dict(path)
    return split_modules(sd), meta


def assert_same_modules(a, b):  # noqa: ANN001
    assert set(a) == set(b)
    for n in a:
        assert a[n].rank == b[n].rank and a[n].alpha == b[n].alpha, n
        assert a[n].down.shape == b[n].down.shape and a[n].up.shape == b[n].up.shape, n
        torch.testing.assert_close(a[n].delta(), b[n].delta(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("via", ["diffusers", "peft"])
def test_kohya_round_trip_is_identical(family, via, tmp_path, locons):  # noqa: ANN001
    src = locons(family)
    mid, back = tmp_path / f"{via}.safetensors", tmp_path / "back.safetensors"
    convert_lora.main([str(src), str(mid), "--to", via])
    convert_lora.main([str(mid), str(back), "--to", "kohya"])
    (a, meta_a), (b, meta_b) = read_kohya(src), read_kohya(back)
    assert_same_modules(a, b)
    assert any(m.is_conv and m.kernel_size == (3, 3) for m in b.values())
    assert len({m.rank for m in b.values()}) > 1 and len({m.alpha for m in b.values()}) > 2
    for key in ("ss_training_comment", "ss_base_model_version", "ss_network_dim"):
        assert meta_b[key] == meta_a[key]
    mid_keys = load_state_dict(mid)[0].keys()
    marker = ".lora_A.weight" if via == "peft" else ".lora.down.weight"
    assert any(k.startswith("unet.") and k.endswith(marker) for k in mid_keys)
    assert not any(k.endswith(".alpha") for k in mid_keys)  # alphas live in the header, where diffusers reads them
    assert ("text_encoder_2." in "".join(mid_keys)) == (family == "sdxl")


def _pipeline(bundle):  # noqa: ANN001, ANN202
    from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    if bundle.is_sdxl:
        return StableDiffusionXLPipeline(vae=bundle.vae, text_encoder=bundle.text_encoders[0],
                                         text_encoder_2=bundle.text_encoders[1], tokenizer=bundle.tokenizers[0],
                                         tokenizer_2=bundle.tokenizers[1], unet=bundle.unet, scheduler=DDPMScheduler())
    return StableDiffusionPipeline(vae=bundle.vae, text_encoder=bundle.text_encoders[0], tokenizer=bundle.tokenizers[0],
                                   unet=bundle.unet, scheduler=DDPMScheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def diffusers_deltas(pipe, sdxl, adapter):  # noqa: ANN001, ANN201
    """ΔW of every PEFT layer diffusers created, by kohya name."""
    out = {}
    for component in lf.COMPONENTS:
        model = getattr(pipe, component, None)
        for name, m in (model.named_modules() if model is not None else ()):
            if hasattr(m, "lora_A") and adapter in m.lora_A:
                out[lf.module_to_kohya(component, name, sdxl)] = m.get_delta_weight(adapter).float()
    return out


def assert_loads_in_diffusers(files, want, family):  # noqa: ANN001
    pipe = _pipeline(random_bundle(family))
    for i, f in enumerate(files):
        pipe.load_lora_weights(str(f), adapter_name=f"a{i}")
        got = diffusers_deltas(pipe, family == "sdxl", f"a{i}")
        assert set(got) == set(want), f.name  # every module applied
        for n, m in want.items():
            torch.testing.assert_close(got[n].reshape(m.delta().shape), m.delta(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_results_load_in_diffusers_with_every_module(family, tmp_path, locons):  # noqa: ANN001
    """Diffusers and PEFT files (per-module ranks and alphas) load completely in diffusers' `load_lora_weights`
    with the right ΔW; so does the kohya file made back from the PEFT file."""
    src = locons(family)
    peft_file, diff_file = tmp_path / "p.safetensors", tmp_path / "d.safetensors"
    convert_lora.main([str(src), str(peft_file), "--to", "peft"])
    convert_lora.main([str(src), str(diff_file), "--to", "diffusers"])
    assert_loads_in_diffusers([diff_file, peft_file], read_kohya(src)[0], family)
    # diffusers' own kohya reader mis-scales attention modules whose alpha differs from the file's most common
    # one (docs/conversion.md), so the kohya check uses per-module ranks with one alpha per module kind
    src = locons(family, vary_alpha=False)
    convert_lora.main([str(src), str(peft_file), "--to", "peft"])
    kohya = tmp_path / "k2.safetensors"
    convert_lora.main([str(peft_file), str(kohya), "--to", "kohya"])
    assert_loads_in_diffusers([kohya], read_kohya(src)[0], family)


def _peft_lora(model, config, seed):  # noqa: ANN001, ANN202
    from peft import inject_adapter_in_model

    model = inject_adapter_in_model(config, model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def peft_deltas(model, component, sdxl):  # noqa: ANN001, ANN201
    return {lf.module_to_kohya(component, n, sdxl): m.get_delta_weight("default").float()
            for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}


def network_deltas(bundle, kohya_file):  # noqa: ANN001, ANN201
    """ΔW of each module as networks.lora builds and loads it from the file."""
    te = _te_arg(bundle)
    network, sd = lora.create_network_from_weights(1.0, kohya_file, bundle.vae, te, bundle.unet)
    network.apply_to(te, bundle.unet)
    result = network.load_state_dict(sd, strict=False)
    assert not result.unexpected_keys and not result.missing_keys
    return {m.lora_name: m.delta_weight() for m in network.text_encoder_loras + network.unet_loras}


def test_file_written_by_peft_converts_and_loads_in_networks_lora(tmp_path):  # noqa: ANN001
    """PEFT's own state dicts (a LoraConfig with rank and alpha patterns on a tiny U-Net and CLIP), packed as
    diffusers' save_lora_weights does, become a kohya file whose networks.lora deltas equal PEFT's."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    unet_cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out",
                                                             "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
                                                             "conv_shortcut", "time_emb_proj"],
                          rank_pattern={"mid_block.attentions.0.proj_in": 2, "conv1": 3},
                          alpha_pattern={"attn2.to_k": 1.5})
    te_cfg = LoraConfig(r=2, lora_alpha=3, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
                        rank_pattern={"layers.1.mlp.fc1": 5})
    bundle = random_bundle("sd1")
    unet = _peft_lora(bundle.unet, unet_cfg, 1)
    te = _peft_lora(bundle.text_encoders[0], te_cfg, 2)
    want = {**peft_deltas(unet, lf.UNET, False), **peft_deltas(te, lf.TE, False)}
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(unet), text_encoder_lora_layers=get_peft_model_state_dict(te),
        unet_lora_adapter_metadata=unet_cfg.to_dict(), text_encoder_lora_adapter_metadata=te_cfg.to_dict())
    kohya = tmp_path / "kohya.safetensors"
    convert_lora.main([str(tmp_path / "pytorch_lora_weights.safetensors"), str(kohya), "--to", "kohya"])
    modules, meta = read_kohya(kohya)
    assert {m.rank for m in modules.values()} == {2, 3, 4, 5}
    assert meta["ss_network_dim"] == "Dynamic" and meta["ss_network_module"] == "networks.lora"
    got = network_deltas(random_bundle("sd1"), kohya)
    assert set(got) == set(want) and len(want) > 150
    for n in want:
        torch.testing.assert_close(got[n], want[n].reshape(got[n].shape), rtol=1e-5, atol=1e-7)


def test_peft_adapter_folder_with_rslora(tmp_path):  # noqa: ANN001
    """A PEFT adapter folder (adapter_config.json, `base_model.model.` keys), rsLoRA scale alpha/√r included."""
    from peft import LoraConfig, get_peft_model

    bundle = random_bundle("sd2")
    cfg = LoraConfig(r=4, lora_alpha=2, use_rslora=True, target_modules=["q_proj", "v_proj", "fc2"],
                     rank_pattern={"layers.0.self_attn.q_proj": 1})
    model = get_peft_model(bundle.text_encoders[0], cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    want = peft_deltas(model.base_model.model, lf.TE, False)
    model.save_pretrained(tmp_path / "adapter")
    kohya = tmp_path / "kohya.safetensors"
    assert run_main(convert_lora.main, [str(tmp_path / "adapter"), str(kohya), "--to", "kohya"]) == 0
    got = network_deltas(random_bundle("sd2"), kohya)
    assert set(got) == set(want) and len(want) == 9
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-7)


def test_fused_openclip_qkv_is_split_exactly(tmp_path):  # noqa: ANN001
    """A module on OpenCLIP's fused in_proj becomes q, k and v modules whose ΔW are the fused ΔW's row thirds."""
    g = torch.Generator().manual_seed(4)
    fused = LoRAFactors(torch.randn(3, 32, generator=g), torch.randn(96, 3, generator=g), 1.5)
    out_proj = LoRAFactors(torch.randn(2, 32, generator=g), torch.randn(32, 2, generator=g), 2.0)
    src = tmp_path / "fused.safetensors"
    save_lora(src, modules_to_state_dict({"lora_te2_transformer_resblocks_1_attn_in_proj": fused,
                                          "lora_te2_transformer_resblocks_1_attn_out_proj": out_proj}))
    kohya = tmp_path / "split.safetensors"
    convert_lora.main([str(src), str(kohya), "--to", "kohya"])
    modules, _ = read_kohya(kohya)
    base = "lora_te2_text_model_encoder_layers_1_"
    assert set(modules) == {base + p for p in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj",
                                               "self_attn_out_proj")}
    for i, p in enumerate(("q", "k", "v")):
        m = modules[f"{base}self_attn_{p}_proj"]
        assert m.rank == 3 and m.alpha == 1.5
        torch.testing.assert_close(m.delta(), fused.delta()[32 * i:32 * (i + 1)], rtol=0, atol=1e-6)
    bundle = random_bundle("sdxl")
    assert set(network_deltas(bundle, kohya)) == set(modules)  # lands on the SDXL te2 layers


def test_inexpressible_modules_in_one_warning(tmp_path, capsys):  # noqa: ANN001
    g = torch.Generator().manual_seed(5)
    sd = {
        "unet.mid_block.attentions.0.proj_in.lora_A.weight": torch.randn(2, 64, 1, 1, generator=g),
        "unet.mid_block.attentions.0.proj_in.lora_B.weight": torch.randn(64, 2, 1, 1, generator=g),
        "unet.my_adapter.extra.lora_A.weight": torch.randn(2, 8, generator=g),
        "unet.my_adapter.extra.lora_B.weight": torch.randn(8, 2, generator=g),
        "unet.mid_block.attentions.0.proj_out.lora_A.weight": torch.randn(2, 64, 1, 1, generator=g),
        "unet.mid_block.attentions.0.proj_out.lora_B.weight": torch.randn(64, 2, 1, 1, generator=g),
        "unet.mid_block.attentions.0.proj_out.lora_magnitude_vector": torch.randn(64, generator=g),
    }
    src, out = tmp_path / "p.safetensors", tmp_path / "k.safetensors"
    save_lora(src, sd)
    convert_lora.main([str(src), str(out), "--to", "kohya"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if "left out" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING")
    assert "2 module(s)" in warnings[0] and "unet.my_adapter.extra" in warnings[0]
    assert "unet.mid_block.attentions.0.proj_out (has lora_magnitude_vector" in warnings[0]  # DoRA
    modules, _ = read_kohya(out)
    assert set(modules) == {"lora_unet_mid_block_attentions_0_proj_in"}
    assert modules["lora_unet_mid_block_attentions_0_proj_in"].alpha == 2.0  # no alpha stored: alpha = rank


def test_adapter_metadata_is_a_valid_lora_config(tmp_path, locons):  # noqa: ANN001
    from peft import LoraConfig

    src = locons("sdxl")
    out = tmp_path / "d.safetensors"
    convert_lora.main([str(src), str(out), "--to", "diffusers"])
    packed = json.loads(read_metadata(out)["lora_adapter_metadata"])
    configs = {c: LoraConfig(**{k.split(".", 1)[1]: v for k, v in packed.items() if k.startswith(c + ".")})
               for c in ("unet", "text_encoder", "text_encoder_2")}
    assert configs["unet"].r == 4 and configs["unet"].lora_alpha == 2.0
    assert set(configs["unet"].rank_pattern.values()) == {1, 2}  # rank-1 modules and the rank-2 3x3 convs
    assert configs["text_encoder_2"].alpha_pattern and all(  # patterns match either transformers module tree
        not p.startswith("text_model.") for p in configs["text_encoder_2"].target_modules)


def test_errors_are_one_line_and_inputs_untouched(tmp_path, capsys):  # noqa: ANN001
    src = make_locon(tmp_path / "k.safetensors", "sd1")  # its own copy: the test asserts the bytes stay
    before = src.read_bytes()
    cases = [
        ([str(src), str(src), "--to", "diffusers"], "is also the input"),
        ([str(src), str(tmp_path / "x.ckpt"), "--to", "peft"], ".safetensors"),
        ([str(tmp_path / "missing.safetensors"), str(tmp_path / "y.safetensors"), "--to", "kohya"], "not found"),
        ([str(src), str(tmp_path), "--to", "kohya"], "is a folder"),
    ]
    for argv, words in cases:
        assert run_main(convert_lora.main, argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and words in err and len(err.splitlines()) == 1, err
    not_lora = tmp_path / "w.safetensors"
    save_lora(not_lora, {"weight": torch.ones(2, 2)})
    assert run_main(convert_lora.main, [str(not_lora), str(tmp_path / "z.safetensors"), "--to", "kohya"]) == 2
    assert "not a LoRA" in capsys.readouterr().err
    assert src.read_bytes() == before and not (tmp_path / "x.ckpt").exists()


def test_sd2_conv_projections_become_linear_for_diffusers(tmp_path, locons):  # noqa: ANN001
    """sd-scripts trains SD2's proj_in/proj_out as 1x1 convs (4-D factors); Diffusers SD2 models have Linear
    projections, so the Diffusers/PEFT output writes them 2-D and diffusers loads every module."""
    modules, meta = read_kohya(locons("sd2"))
    proj = [n for n in modules if n.endswith(("_proj_in", "_proj_out"))]
    for n in proj:
        m = modules[n]
        modules[n] = LoRAFactors(m.down[:, :, None, None], m.up[:, :, None, None], m.alpha)
    src = tmp_path / "conv.safetensors"
    save_lora(src, modules_to_state_dict(modules), meta)
    out = tmp_path / "d.safetensors"
    convert_lora.main([str(src), str(out), "--to", "diffusers"])
    sd, _ = load_state_dict(out)
    assert all(sd[k].ndim == 2 for k in sd if ".proj_in." in k or ".proj_out." in k) and len(proj) == 32
    assert_loads_in_diffusers([out], read_kohya(src)[0], "sd2")

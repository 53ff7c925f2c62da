"""networks.lycoris (LoHa, LoKr, LoCon, DoRA) on the tiny SD1 and SDXL models: training by the scripts as a user
runs them, LyCORIS 3.2's layout, names and forward output, `lycoris.kohya` resolution, generation and the
Diffusers-pipeline API. The native path is forced (LORA_TOOLKIT_LYCORIS=native) where lycoris-lora is installed."""

from __future__ import annotations

import copy
import json
import logging
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from train_fixtures import tb_scalars  # noqa: E402

import sdxl_train_network  # noqa: E402
import train_network  # noqa: E402
from library import adapters  # noqa: E402
from library.errors import ToolkitError  # noqa: E402
from library.models.factory import random_bundle  # noqa: E402
from library.options.lycoris_args import LycorisArgs  # noqa: E402
from networks import lycoris  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
lyco = pytest.importorskip("lycoris", reason="lycoris-lora (requirements-dev.txt) gives the reference modules")

STEPS = 4
# (family, algorithm args): every algorithm and DoRA trained on each family
RUNS = {
    ("sd1", "loha"): ["algo=loha", "dora_wd=True", "use_tucker=True"],
    ("sd1", "lokr"): ["algo=lokr", "factor=4", "decompose_both=True"],
    ("sdxl", "lokr"): ["algo=lokr", "factor=4", "dora_wd=True"],
    ("sdxl", "loha"): ["algo=loha"],
}


@pytest.fixture(autouse=True)
def _keep_logging():
    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


def args_for(ckpt: Path, img: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["--pretrained_model_name_or_path", str(ckpt), "--train_data_dir", str(img), "--resolution", "64",
            "--output_dir", str(out), "--output_name", "lyco", "--max_train_steps", str(steps), "--seed", "1",
            "--learning_rate", "4e-2", "--network_dim", "4", "--network_alpha", "2", "--train_batch_size", "2",
            "--cache_latents", "--network_train_unet_only", "--max_data_loader_n_workers", "0", *extra]


KOHYA_RUN = ("sd1", "lokr")  # trained from a config that says `network_module = "lycoris.kohya"`
SAME_SEED_STEPS = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_checkpoints) -> dict:
    """Each RUNS entry trained STEPS steps by its family's script: (file, step losses, stderr)."""
    from library.sample_data import make_sample_dataset

    root = tmp_path_factory.mktemp("lyco")
    img = make_sample_dataset(root / "data", num_images=8, resolution=64, seed=0)
    config = root / "kohya.toml"
    config.write_text('network_module = "lycoris.kohya"\n')
    out = {"img": img, "root": root, "config": config}
    mp = pytest.MonkeyPatch()
    mp.setenv("LORA_TOOLKIT_LYCORIS", "native")  # lycoris-lora is installed here: force the native module
    try:
        for (family, name), algo in RUNS.items():
            script = sdxl_train_network if family == "sdxl" else train_network
            logs = root / f"logs-{family}-{name}"
            # KOHYA_RUN also saves at step SAME_SEED_STEPS, which the same-seed test repeats
            module = ["--config_file", str(config), "--save_every_n_steps", str(SAME_SEED_STEPS)] \
                if (family, name) == KOHYA_RUN else ["--network_module", "networks.lycoris"]
            path = script.main([*module, *args_for(tiny_checkpoints[family], img, root / f"{family}-{name}", STEPS,
                                                   "--logging_dir", str(logs), "--network_args", *algo)])
            out[family, name] = (Path(path), [v for _, v in tb_scalars(logs, "loss/current")])
    finally:
        mp.undo()
    return out


@pytest.fixture(scope="module")
def sd1_bundle():
    return random_bundle("sd1")


# ---- training ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(RUNS), ids=lambda c: "-".join(c))
def test_loss_falls_and_the_file_has_lycoris_layout(trained, case):
    path, losses = trained[case]
    # measured (mean of the last two losses / the first): trained runs 0.73-0.81; the same runs at lr 1e-9 0.92-0.93
    assert statistics.mean(losses[-2:]) < 0.86 * losses[0], losses
    sd = load_file(path)
    suffixes = {k.split(".", 1)[1] for k in sd}
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] == ("lycoris.kohya" if case == KOHYA_RUN else "networks.lycoris")
    args = json.loads(meta["ss_network_args"])
    assert args["algo"] == case[1]
    if case[1] == "loha":
        assert {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"} <= suffixes
        assert ("hada_t1" in suffixes) == ("use_tucker=True" in RUNS[case])
    else:
        assert "lokr_w1" in suffixes and "alpha" in suffixes and not any(s.startswith("hada") for s in suffixes)
    assert all(k.startswith("lora_unet_") for k in sd)  # --network_train_unet_only
    if case[0] == "sdxl":
        assert any(k.startswith("lora_unet_input_blocks_") for k in sd)
    dora = {k: v for k, v in sd.items() if k.endswith(".dora_scale")}
    assert bool(dora) == ("dora_wd=True" in RUNS[case])
    for key, m in dora.items():  # the input-axis layout LyCORIS, ComfyUI and A1111 apply alike
        assert m.shape[0] == 1 and m.ndim in (2, 4), (key, m.shape)
    assert all(torch.isfinite(v).all() for v in sd.values())


def test_lokr_alphas_as_lycoris_writes_them(trained):
    sd = load_file(trained["sd1", "lokr"][0])
    names = {k.split(".")[0] for k in sd}
    full = [n for n in names if f"{n}.lokr_w2" in sd and f"{n}.lokr_w1" in sd]
    low = [n for n in names if f"{n}.lokr_w2_b" in sd]
    assert full and low
    assert all(float(sd[f"{n}.alpha"]) == 4 for n in full)  # both factors full: alpha = network_dim, scale 1
    assert all(float(sd[f"{n}.alpha"]) == 2 for n in low)


def test_same_seed_same_file_and_lycoris_kohya_ran_native(trained, tiny_checkpoints, tmp_path, capsys):
    """The fixture trained KOHYA_RUN from a config naming `lycoris.kohya` (native module forced), saving at step
    SAME_SEED_STEPS: networks.lycoris run that many steps at the same seed gives the same tensors."""
    capsys.readouterr()
    again = train_network.main(["--network_module", "networks.lycoris",
                                *args_for(tiny_checkpoints["sd1"], trained["img"], tmp_path, SAME_SEED_STEPS,
                                          "--network_args", *RUNS[KOHYA_RUN])])
    assert "lycoris.kohya" not in capsys.readouterr().err
    first = trained[KOHYA_RUN][0]
    sa, sb = load_file(first.with_name(f"{first.stem}-step{SAME_SEED_STEPS:08d}.safetensors")), load_file(again)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(v.abs().sum() > 0 for k, v in sa.items() if "lokr_w2" in k)


def test_lycoris_kohya_says_which_module_in_one_line(monkeypatch, caplog):
    from library.network_module import import_network_module

    monkeypatch.setenv("LORA_TOOLKIT_LYCORIS", "native")
    with caplog.at_level(logging.INFO, logger="library.network_module"):
        assert import_network_module("lycoris.kohya") is lycoris
    lines = [r.getMessage() for r in caplog.records if r.name == "library.network_module"]
    assert len(lines) == 1 and "native networks.lycoris" in lines[0]


def test_lycoris_kohya_is_the_package_when_installed(monkeypatch):
    from library.network_module import import_network_module

    monkeypatch.delenv("LORA_TOOLKIT_LYCORIS", raising=False)
    assert import_network_module("lycoris.kohya").__name__ == "lycoris.kohya"
    monkeypatch.setitem(sys.modules, "lycoris", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "lycoris.kohya", None)
    assert import_network_module("lycoris.kohya") is lycoris


# ---- the same numbers as LyCORIS --------------------------------------------------------------------------------
LAYERS = {"linear": lambda: nn.Linear(48, 32), "conv1x1": lambda: nn.Conv2d(16, 32, 1),
          "conv3x3": lambda: nn.Conv2d(16, 32, 3, padding=1)}
VARIANTS = {
    "loha": dict(algo="loha"), "loha-tucker": dict(algo="loha", use_tucker=True),
    "lokr": dict(algo="lokr"), "lokr-f8": dict(algo="lokr", factor=8),
    "lokr-both": dict(algo="lokr", factor=4, decompose_both=True), "lokr-full": dict(algo="lokr", full_matrix=True),
    "lokr-tucker": dict(algo="lokr", factor=2, use_tucker=True), "locon-tucker": dict(algo="locon", use_tucker=True),
    "locon-dora": dict(algo="locon", dora_wd=True), "loha-dora": dict(algo="loha", dora_wd=True),
    "lokr-dora-out": dict(algo="lokr", factor=4, dora_wd=True, wd_on_output=True),
    "loha-rs": dict(algo="loha", rs_lora=True),
}


def _reference(module: lycoris.AdapterModule, layer: nn.Module, args: LycorisArgs, alpha: float):  # noqa: ANN202
    from lycoris.wrapper import network_module_dict

    return network_module_dict[args.algo](
        "m", layer, module.multiplier, module.lora_dim, alpha, 0.0, 0.0, 0.0, args.use_tucker, factor=args.factor,
        decompose_both=args.decompose_both, full_matrix=args.full_matrix, weight_decompose=args.dora_wd,
        wd_on_out=args.wd_on_output, rs_lora=args.rs_lora)


@pytest.mark.parametrize("layer_kind", list(LAYERS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_and_layout_equal_lycoris_modules(variant, layer_kind):
    torch.manual_seed(0)
    layer = LAYERS[layer_kind]()
    args = LycorisArgs(**VARIANTS[variant])
    ours = lycoris.MODULES[args.algo]("m", layer, 1.0, 4, 2.0, args)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.ndim >= 2 and p.shape[0] == 1 else 0.0))
    ref = _reference(ours, layer, args, 2.0)
    ref.load_state_dict(ours.state_dict(), strict=True)  # same key names and shapes
    assert float(ref.alpha) == pytest.approx(float(ours.alpha))
    ours.apply_to()
    x = torch.randn(2, 48) if layer_kind == "linear" else torch.randn(2, 16, 6, 6)
    for mult in (1.0, 0.5):
        ours.multiplier = ref.multiplier = mult
        with torch.no_grad():
            got, want = layer(x), ref(x)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), (variant, mult, (got - want).abs().max())
    ours.remove()


def test_use_scalar_and_bypass_mode():
    """use_scalar: ΔW starts at 0 with every factor non-zero, a trained scalar multiplies it, files hold it folded
    into one factor and load back with scalar 1 (LyCORIS' rules). bypass_mode: base(x) + ΔW·x, never W + ΔW."""
    torch.manual_seed(0)
    x = torch.randn(3, 48)
    for algo in ("locon", "loha", "lokr"):
        layer = nn.Linear(48, 32)
        args = LycorisArgs(algo=algo, factor=4, use_scalar=True)
        m = lycoris.MODULES[algo]("m", layer, 1.0, 4, 2.0, args)
        assert float(m.scalar.detach()) == 0 and all(p.abs().sum() > 0 for n, p in m.named_parameters() if n != "scalar")
        with torch.no_grad():
            base = layer(x)
            m.apply_to()
            assert torch.equal(layer(x), base)
            m.scalar.fill_(0.5)
            got = layer(x)
        sd = m.state_dict()
        assert "scalar" not in sd
        want = nn.functional.linear(x, layer.weight + adapters.delta_weight(sd, layer.weight.shape), layer.bias)
        assert (got - base).abs().max() > 1e-3 and torch.allclose(got, want, atol=1e-5), algo
        again = lycoris.MODULES[algo]("m", nn.Linear(48, 32), 1.0, 4, 2.0, args)
        again.load_state_dict(sd)
        assert float(again.scalar) == 1
        m.remove()
    outs = []
    for bypass in (False, True):
        torch.manual_seed(1)
        layer = nn.Linear(48, 32)
        m = lycoris.MODULES["loha"]("m", layer, 1.0, 4, 2.0, LycorisArgs(algo="loha", bypass_mode=bypass))
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.3)
        m.apply_to()
        assert m._owns_layer() is not bypass  # the merged W + ΔW path only without bypass_mode
        with torch.no_grad():
            outs.append(layer(x))
        m.remove()
    assert torch.allclose(outs[0], outs[1], atol=1e-5) and (outs[0] - layer(x)).abs().max() > 1e-3


# ---- names and presets ------------------------------------------------------------------------------------------
class _HFTextModel(nn.Module):
    """A transformers-5 CLIP seen with sd-scripts' `text_model.` level (what LyCORIS names modules after)."""

    def __init__(self, te: nn.Module) -> None:
        super().__init__()
        self.text_model = te


def _names(net) -> set[str]:  # noqa: ANN001
    return {m.lora_name for m in net.text_encoder_loras + net.unet_loras}


@pytest.mark.parametrize("preset", ["full", "full-lin", "attn-mlp", "unet-only", "unet-convblock-only"])
def test_presets_select_what_lycoris_selects_on_sd1(preset, sd1_bundle):
    from lycoris import kohya

    b = sd1_bundle
    te = b.text_encoders[0]
    ours = lycoris.create_network(1.0, 2, 1, None, te, b.unet, algo="loha", preset=preset)
    try:
        theirs = kohya.create_network(1.0, 2, 1, None, _HFTextModel(te), b.unet, algo="loha", preset=preset)
    finally:
        kohya.LycorisNetworkKohya.apply_preset(kohya.PRESET["full"])
    assert _names(ours) == _names(theirs)
    kinds = {type(m.org_module[0]).__name__ + str(getattr(m.org_module[0], "kernel_size", "")) for m in
             ours.unet_loras}
    assert any("(3, 3)" in k for k in kinds) == (preset in ("full", "unet-only", "unet-convblock-only"))


def test_attn_only_and_sdxl_names_are_sd_scripts_names(sd1_bundle):
    from test_sdxl_train import sd_scripts_sdxl_names

    b = sd1_bundle
    net = lycoris.create_network(1.0, 2, 1, None, b.text_encoders[0], b.unet, preset="attn-only")
    unet = {n for n in _names(net) if n.startswith("lora_unet_")}
    assert unet and all(n.endswith(("_to_q", "_to_k", "_to_v", "_to_out_0")) for n in unet)
    assert all(("_attn1_" in n or "_attn2_" in n) for n in unet)
    assert all("self_attn" in n for n in _names(net) - unet)

    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from library.models.factory import configs

    cfg = configs("sdxl", "real")
    with torch.device("meta"):
        unet_model = UNet2DConditionModel(**cfg["unet"])
        tes = [CLIPTextModel(CLIPTextConfig(**cfg["text_encoders"][0])),
               CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoders"][1]))]
        full = lycoris.create_network(1.0, 4, 1, None, tes, unet_model)
    # full preset on SDXL = LoRA-C3Lier's modules (conv_in/conv_out/time_embedding names match nothing there)
    assert _names(full) == sd_scripts_sdxl_names()[1]


def test_bad_network_args_are_one_line_errors(sd1_bundle):
    b = sd1_bundle
    for kwargs, message in ((dict(algo="glora"), "lycoris.kohya"), (dict(factor="0"), "factor"),
                            (dict(preset="nope"), "preset=nope"), (dict(conv_dim="abc"), "conv_dim"),
                            (dict(rank_dropout="1"), "rank_dropout")):
        with pytest.raises(ToolkitError, match=message):
            lycoris.create_network(1.0, 2, 1, None, b.text_encoders[0], b.unet, **kwargs)


# ---- files in LyCORIS, the pipeline API and generation ----------------------------------------------------------
def _randomized(bundle, algo_args: dict, path: Path) -> Path:  # noqa: ANN001
    """A file of random modules for the bundle's model (the model is left as it was)."""
    te, unet = bundle.text_encoders[0], bundle.unet
    net = lycoris.create_network(1.0, 4, 2, None, te, unet, **algo_args)
    net.apply_to(te, unet, True, True)
    net.remove_from()  # the modules stay registered (and saved); the model runs as before
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if not name.endswith("dora_scale"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    net.save_weights(path, torch.float16, {"ss_network_args": json.dumps(algo_args)})
    return path


def _unet_out(unet: nn.Module, family: str = "sd1") -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x, 500, ctx).sample


MIXED = [dict(algo="loha", use_tucker="True"), dict(algo="lokr", factor="4"),
         dict(algo="locon", dora_wd="True", wd_on_output="True")]


def test_our_file_loads_in_lycoris_with_the_same_output(sd1_bundle, tmp_path):
    """One file whose modules are in turn LoHa (Tucker convs), LoKr and output-axis DoRA LoCon, as our networks
    write them: LyCORIS' loader builds the same modules and the U-Net gives the same output."""
    from lycoris import kohya

    b = sd1_bundle
    groups = [adapters.group_modules(load_file(_randomized(b, a, tmp_path / f"{i}.safetensors")))
              for i, a in enumerate(MIXED)]
    names = sorted(groups[0])
    mixed = {f"{n}.{k}": v for i, n in enumerate(names) for k, v in groups[i % len(MIXED)][n].items()}
    path = tmp_path / "mixed.safetensors"
    save_file(mixed, str(path))
    base = _unet_out(b.unet)
    te = b.text_encoders[0]
    theirs, _ = kohya.create_network_from_weights(1.0, str(path), None, _HFTextModel(te), b.unet)
    ours, sd = lycoris.create_network_from_weights(1.0, str(path), None, te, b.unet)
    assert _names(theirs) == _names(ours) == set(names) and len(names) > 100
    assert {m.algo for m in ours.unet_loras} == {"loha", "lokr", "lora"}
    assert any(m.dora_scale is not None and m.out_axis for m in ours.unet_loras)
    assert any(getattr(m, "tucker", False) and m.algo == "loha" for m in ours.unet_loras)
    theirs.apply_to(te, b.unet, True, True)
    try:
        want = _unet_out(b.unet)
    finally:
        theirs.restore()
    ours.apply_to(te, b.unet)
    ours.load_state_dict(sd, strict=False)
    try:
        got = _unet_out(b.unet)
    finally:
        ours.remove_from()
    assert torch.equal(_unet_out(b.unet), base)
    assert (got - base).abs().max() > 1e-3
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (got - want).abs().max()


def test_input_axis_dora_is_applied_like_lycoris_built_by_hand(trained, sd1_bundle):
    """LyCORIS 3.2 rebuilds DoRA modules on the output axis, so its loader cannot read the input-axis layout we
    write (spec §4); its module class built for that axis gives our numbers."""
    from lycoris import kohya

    path = trained["sd1", "loha"][0]
    unet = copy.deepcopy(sd1_bundle.unet)
    with pytest.raises(RuntimeError):
        kohya.create_network_from_weights(1.0, str(path), None, None, unet)
    ours, sd = lycoris.create_network_from_weights(1.0, str(path), None, None, unet)
    groups = {}
    for k, v in sd.items():
        groups.setdefault(k.split(".")[0], {})[k.split(".", 1)[1]] = v.float()
    m = next(m for m in ours.unet_loras if m.lora_name in groups and "hada_t1" in groups[m.lora_name])
    layer = m.org_module[0]
    args = LycorisArgs(algo="loha", use_tucker=True, dora_wd=True)
    ref = _reference(m, layer, args, float(groups[m.lora_name]["alpha"]))
    ref.load_state_dict(groups[m.lora_name])
    m.load_state_dict(groups[m.lora_name])
    m.apply_to()
    x = torch.randn(1, layer.in_channels, 6, 6)
    with torch.no_grad():
        assert torch.allclose(layer(x), ref(x), rtol=1e-4, atol=1e-5)
    m.remove()


def test_pipeline_api_apply_merge_multiplier(sd1_bundle, tmp_path):
    from networks import lora

    path = _randomized(sd1_bundle, dict(algo="lokr", factor="4"), tmp_path / "k.safetensors")
    te, unet = copy.deepcopy(sd1_bundle.text_encoders[0]), copy.deepcopy(sd1_bundle.unet)
    base = _unet_out(unet)
    net, sd = lora.create_network_from_weights(1.0, str(path), None, te, unet)  # delegates to networks.lycoris
    assert isinstance(net, lycoris.LycorisNetwork)
    net.apply_to(te, unet)
    net.load_state_dict(sd, strict=False)
    applied = _unet_out(unet)
    net.set_multiplier(0.0)
    assert torch.equal(_unet_out(unet), base)
    net.set_multiplier(1.0)
    net.remove_from()
    net.merge_to(te, unet, sd)
    merged = _unet_out(unet)
    assert (applied - base).abs().max() > 1e-3
    assert torch.allclose(merged, applied, rtol=1e-4, atol=1e-4)


def test_generation_applies_lycoris_files(trained, tiny_checkpoints, tmp_path):
    """gen_img_diffusers applies a LoKr (networks.lycoris) and merges a DoRA LoHa through networks.lora; strength 0
    giving the base model is the pipeline-API test's set_multiplier(0)."""
    from gen_img_diffusers import main

    def run(out: Path, *args: str) -> np.ndarray:
        main(["--ckpt", str(tiny_checkpoints["sd1"]), "--outdir", str(out), "--prompt", "a red circle", "--seed", "3",
              "--W", "64", "--H", "64", "--steps", "2", "--sampler", "euler", *args])
        [p] = sorted(out.glob("*.png"))
        return np.asarray(Image.open(p)).astype(np.int32)

    lokr, dora = str(trained["sd1", "lokr"][0]), str(trained["sd1", "loha"][0])
    base = run(tmp_path / "base")
    with_lokr = run(tmp_path / "k", "--network_module", "networks.lycoris", "--network_weights", lokr)
    # networks.lora hands LyCORIS files to networks.lycoris, here merged (the DoRA weight baked in)
    with_dora = run(tmp_path / "d", "--network_module", "networks.lora", "--network_weights", dora, "--network_merge")
    assert np.abs(with_lokr - base).mean() > 0.5 and np.abs(with_dora - base).mean() > 0.5
    assert np.abs(with_dora - with_lokr).mean() > 0.5


def test_max_norm_scales_only_modules_above_it(sd1_bundle):
    """--scale_weight_norms: LyCORIS' rule (modules below the norm untouched), every algorithm."""
    net = lycoris.create_network(1.0, 4, 2, None, None, sd1_bundle.unet, algo="loha", preset="attn-only")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i, m in enumerate(net.unet_loras):
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if i % 2 else 0.01))
    with torch.no_grad():
        before = [float(m.delta().norm()) for m in net.unet_loras]
    scaled, mean, top = net.apply_max_norm_regularization(1.0)
    with torch.no_grad():
        after = [float(m.delta().norm()) for m in net.unet_loras]
    assert scaled == sum(b > 1.0 for b in before) > 0 and top == pytest.approx(1.0, rel=1e-5)
    assert all(a == pytest.approx(min(b, 1.0), rel=1e-5) for a, b in zip(after, before))

"""sdxl_train_network.py (and train_network.py given SDXL) on the tiny SDXL model: loss falls, determinism,
sd-scripts' names and metadata, Diffusers loading, text-encoder caching, sd-scripts configs, DyLoRA, block-wise,
samples, two processes. Runs the scripts' `main` as a user would."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sdxl_train_network  # noqa: E402
import train_network  # noqa: E402
from library.cli import run_main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_checkpoints) -> dict[str, Path]:
    from library.sample_data import make_sample_dataset

    root = tmp_path_factory.mktemp("sdxl")
    img = make_sample_dataset(root / "data", num_images=8, resolution=64, seed=0)
    return {"root": root, "ckpt": tiny_checkpoints["sdxl"], "img": img}


def base_args(env: dict, out: Path, steps: int = 4, *extra: str) -> list[str]:
    return ["--pretrained_model_name_or_path", str(env["ckpt"]), "--train_data_dir", str(env["img"]),
            "--resolution", "64", "--output_dir", str(out), "--output_name", "lora", "--max_train_steps", str(steps),
            "--learning_rate", "5e-3", "--network_dim", "4", "--network_alpha", "4", "--seed", "1",
            "--max_data_loader_n_workers", "0", *extra]


def tb_losses(logdir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(logdir.glob("**/events*"))
    acc = EventAccumulator(str(files[0]))
    acc.Reload()
    return [e.value for e in acc.Scalars("loss/current")]


def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def module_names(sd: dict) -> set[str]:
    return {k.split(".")[0] for k in sd}


# ---- training behaviour ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lierla", "c3lier"])
def test_loss_falls_names_and_metadata(env, tmp_path, kind):
    # SDXL has no attention at full resolution, so on the tiny random model LierLa (attention only) moves the
    # loss slowly and C3Lier (resnet convs too) fast: measured 1.11 -> 1.01 (60 steps) and 1.03 -> 0.58 (30 steps)
    if kind == "c3lier":
        steps, bound, extra = 30, 0.7, ["--learning_rate", "1e-2", "--network_args", "conv_dim=4", "conv_alpha=4"]
    else:
        steps, bound, extra = 60, 0.95, ["--learning_rate", "2e-2", "--gradient_checkpointing"]
    path = sdxl_train_network.main(base_args(env, tmp_path / "out", steps, "--train_batch_size", "2",
                                             "--cache_latents", "--logging_dir", str(tmp_path / "logs"), *extra))
    losses = tb_losses(tmp_path / "logs")
    first, last = statistics.mean(losses[:8]), statistics.mean(losses[-8:])
    assert last < bound * first, (first, last)
    sd = load_file(path)
    names = module_names(sd)
    te1 = {n for n in names if n.startswith("lora_te1_text_model_encoder_layers_")}
    te2 = {n for n in names if n.startswith("lora_te2_text_model_encoder_layers_")}
    assert len(te1) == len(te2) == 12  # 2 layers x (q, k, v, out, fc1, fc2) each in the tiny encoders
    unet = names - te1 - te2
    assert all(re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)_\d", n) for n in unet)
    # training uses te1's penultimate layer, so its last layer (like layer 11 of the real CLIP-L) never trains;
    # te2's last layer trains through the pooled output
    untrained = {n for n in names if sd[f"{n}.lora_up.weight"].abs().sum() == 0}
    assert {n for n in untrained if n.startswith("lora_te")} == {n for n in te1 if "_layers_1_" in n}
    convs = [k for k, v in sd.items() if k.endswith("lora_down.weight") and v.ndim == 4 and v.shape[-1] == 3]
    assert bool(convs) == (kind == "c3lier")
    meta = metadata(path)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"


def test_same_seed_same_file_and_train_network_takes_sdxl(env, tmp_path, capsys):
    extra = ["--cache_latents", "--flip_aug"]
    a = sdxl_train_network.main(base_args(env, tmp_path / "a", 3, *extra))
    b = train_network.main(base_args(env, tmp_path / "b", 3, *extra))
    assert capsys.readouterr().err.count("is an SDXL model: training it as SDXL") == 1  # train_network.py only
    sa, sb = load_file(a), load_file(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(v.abs().sum() > 0 for k, v in sa.items() if "lora_up" in k)


def test_names_equal_sd_scripts_sdxl_names():
    """Real-shape SDXL (built on the meta device: names only) against sd-scripts' module inventory."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from library.models.factory import configs
    from networks import lora

    cfg = configs("sdxl", "real")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg["unet"])
        tes = [CLIPTextModel(CLIPTextConfig(**cfg["text_encoders"][0])),
               CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoders"][1]))]
        lierla = lora.create_network(1.0, 4, 1, None, tes, unet)
        c3lier = lora.create_network(1.0, 4, 1, None, tes, unet, conv_dim=4)
    expected_ll, expected_c3 = sd_scripts_sdxl_names()
    assert {m.lora_name for m in lierla.text_encoder_loras + lierla.unet_loras} == expected_ll
    assert {m.lora_name for m in c3lier.text_encoder_loras + c3lier.unet_loras} == expected_c3
    assert (len(expected_ll), len(expected_c3)) == (986, 1052)


def sd_scripts_sdxl_names() -> tuple[set[str], set[str]]:
    """sd-scripts' SDXL LoRA module names (LierLa, C3Lier), written from its inventory (test data)."""
    te = {f"lora_te{i}_text_model_encoder_layers_{n}_{m}" for i, layers in ((1, 12), (2, 32)) for n in range(layers)
          for m in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj", "mlp_fc1",
                    "mlp_fc2")}
    depth = {"input_blocks_4_1": 2, "input_blocks_5_1": 2, "input_blocks_7_1": 10, "input_blocks_8_1": 10,
             "middle_block_1": 10, **{f"output_blocks_{i}_1": 10 for i in (0, 1, 2)},
             **{f"output_blocks_{i}_1": 2 for i in (3, 4, 5)}}
    leaves = ("attn1_to_q", "attn1_to_k", "attn1_to_v", "attn1_to_out_0", "attn2_to_q", "attn2_to_k", "attn2_to_v",
              "attn2_to_out_0", "ff_net_0_proj", "ff_net_2")
    unet = set()
    for block, d in depth.items():
        unet |= {f"lora_unet_{block}_proj_in", f"lora_unet_{block}_proj_out"}
        unet |= {f"lora_unet_{block}_transformer_blocks_{k}_{leaf}" for k in range(d) for leaf in leaves}
    resnets = [f"input_blocks_{i}_0" for i in (1, 2, 4, 5, 7, 8)] + ["middle_block_0", "middle_block_2"] + \
        [f"output_blocks_{i}_0" for i in range(9)]
    conv = {f"lora_unet_{r}_{leaf}" for r in resnets for leaf in ("in_layers_2", "out_layers_3", "emb_layers_1")}
    conv |= {f"lora_unet_{r}_skip_connection" for r in ["input_blocks_4_0", "input_blocks_7_0"] +
             [f"output_blocks_{i}_0" for i in range(9)]}
    conv |= {"lora_unet_input_blocks_3_0_op", "lora_unet_input_blocks_6_0_op", "lora_unet_output_blocks_2_2_conv",
             "lora_unet_output_blocks_5_2_conv"}
    return te | unet, te | unet | conv


# ---- interoperability -------------------------------------------------------------------------------------------
def _lora_targets(bundle, path: Path) -> dict[str, str]:  # noqa: ANN001
    """kohya module name -> Diffusers module path ("unet."/"text_encoder."/"text_encoder_2." + path)."""
    from networks import lora

    net, _ = lora.create_network_from_weights(1.0, path, bundle.vae, bundle.text_encoders, bundle.unet)
    where = {id(m): f"unet.{p}" for p, m in bundle.unet.named_modules()}
    for i, te in enumerate(bundle.text_encoders):
        where.update({id(m): f"text_encoder{'_2' if i else ''}.{p}" for p, m in te.named_modules()})
    return {m.lora_name: where[id(m.org_module[0])] for m in net.text_encoder_loras + net.unet_loras}


@pytest.mark.parametrize("kind", ["lierla", "c3lier"])
def test_diffusers_applies_every_module_exactly(env, tmp_path, kind):
    from library.generate.pipeline import build_pipeline
    from library.models import load_models

    extra = ["--network_args", "conv_dim=4", "conv_alpha=2"] if kind == "c3lier" else []
    path = sdxl_train_network.main(base_args(env, tmp_path / "out", 2, "--cache_latents", "--learning_rate", "5e-2",
                                             "--network_alpha", "2", *extra))
    sd = load_file(path)
    bundle = load_models(env["ckpt"])
    targets = _lora_targets(bundle, path)
    assert set(targets) == module_names(sd)
    pipe = build_pipeline(bundle)
    pipe.load_lora_weights(str(path), adapter_name="trained")
    pipe.set_adapters(["trained"], adapter_weights=[0.7])
    checked = 0
    for name, p in targets.items():
        module = pipe.components[p.split(".")[0]].get_submodule(p.split(".", 1)[1])
        assert hasattr(module, "get_delta_weight"), f"{name}: not applied by diffusers"
        delta = module.get_delta_weight("trained").detach().float()
        up, down = sd[f"{name}.lora_up.weight"].float(), sd[f"{name}.lora_down.weight"].float()
        rank = down.shape[0]
        expected = (up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)).reshape(delta.shape)
        expected = 0.7 * float(sd[f"{name}.alpha"]) / rank * expected
        if expected.abs().max() == 0:  # never trained (te1's last layer): nothing may change
            assert delta.abs().max() == 0, name
            continue
        assert (delta - expected).norm() <= 1e-4 * expected.norm(), name
        checked += 1
    assert checked >= len(targets) - 8  # all but te1's untrained last layer (6 modules) and mid q/k at 2x2 tokens


# ---- text-encoder output caching --------------------------------------------------------------------------------
def _copy_images(env: dict, folder: Path, n: int = 4) -> Path:
    import shutil

    folder.mkdir(parents=True)
    for p in sorted((env["img"] / "10_sks circle").glob("*"))[: 2 * n]:
        if p.suffix in (".png", ".caption"):
            shutil.copy(p, folder / p.name)
    return folder.parent


def test_cached_text_outputs_give_the_same_first_loss_and_stale_files_are_rebuilt(env, tmp_path):
    import numpy as np

    data = _copy_images(env, tmp_path / "data" / "2_circle")
    folder = data / "2_circle"
    common = ["--train_data_dir", str(data), "--network_train_unet_only", "--cache_latents", "--train_batch_size", "2"]
    losses = {}
    for mode in ("live", "memory", "disk"):
        flags = {"live": [], "memory": ["--cache_text_encoder_outputs"],
                 "disk": ["--cache_text_encoder_outputs_to_disk"]}[mode]
        sdxl_train_network.main(base_args(env, tmp_path / mode, 1, *common, *flags,
                                          "--logging_dir", str(tmp_path / f"logs-{mode}")))
        losses[mode] = tb_losses(tmp_path / f"logs-{mode}")[0]
    assert losses["memory"] == pytest.approx(losses["live"], rel=1e-5)
    assert losses["disk"] == pytest.approx(losses["live"], rel=1e-5)

    files = sorted(folder.glob("*_te_outputs.npz"))
    assert [f.name for f in files] == [f"000{i}_te_outputs.npz" for i in range(4)]
    with np.load(files[0]) as z:  # sd-scripts' arrays, plus what tells a stale file
        assert z["hidden_state1"].shape == (77, 32) and z["hidden_state2"].shape == (77, 32)
        assert z["pool2"].shape == (32,)
        assert str(z["caption"]) == (folder / "0000.caption").read_text(encoding="utf-8").strip()
    stamps = {f.name: f.stat().st_mtime_ns for f in files}
    (folder / "0001.caption").write_text("a blue square", encoding="utf-8")
    sdxl_train_network.main(base_args(env, tmp_path / "again", 1, *common, "--cache_text_encoder_outputs_to_disk"))
    changed = {f.name for f in files if f.stat().st_mtime_ns != stamps[f.name]}
    assert changed == {"0001_te_outputs.npz"}
    with np.load(folder / "0001_te_outputs.npz") as z:
        assert str(z["caption"]) == "a blue square"

    # other encoders (another model) make every file stale
    from library.models.factory import write_random_checkpoint

    other = write_random_checkpoint(tmp_path / "other.safetensors", "sdxl", seed=7)
    stamps = {f.name: f.stat().st_mtime_ns for f in files}
    sdxl_train_network.main(base_args(env, tmp_path / "other", 1, *common, "--cache_text_encoder_outputs_to_disk",
                                      "--pretrained_model_name_or_path", str(other)))
    assert all(f.stat().st_mtime_ns != stamps[f.name] for f in files)


def error_of(capsys, main, argv: list[str]) -> str:  # noqa: ANN001
    assert run_main(main, argv) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_refusals(env, tmp_path, tiny_checkpoints, capsys):
    out = tmp_path / "o"
    err = error_of(capsys, sdxl_train_network.main, base_args(env, out, 1, "--cache_text_encoder_outputs"))
    assert "--network_train_unet_only" in err
    for flag in (["--shuffle_caption"], ["--caption_dropout_rate", "0.1"], ["--token_warmup_step", "5"],
                 ["--caption_tag_dropout_rate", "0.2"]):
        err = error_of(capsys, sdxl_train_network.main, base_args(env, out, 1, "--cache_text_encoder_outputs_to_disk",
                                                                   "--network_train_unet_only", *flag))
        assert flag[0][2:] in err and "cannot be cached" in err
    err = error_of(capsys, sdxl_train_network.main, base_args(env, out, 1, "--pretrained_model_name_or_path",
                                                               str(tiny_checkpoints["sd1"])))
    assert "SD1 model" in err and "train_network.py" in err
    err = error_of(capsys, train_network.main, base_args(env, out, 1, "--v2"))
    assert "--v2" in err and "SDXL" in err
    assert not out.exists()


# ---- sd-scripts configs -----------------------------------------------------------------------------------------
def test_sd_scripts_sdxl_dataset_toml_and_command_line(env, tmp_path):
    """A typical sd-scripts SDXL LoRA setup (dataset TOML + command line), scaled down to the tiny model."""
    data = _copy_images(env, tmp_path / "train" / "img")
    toml_file = tmp_path / "dataset.toml"
    toml_file.write_text(f"""
[general]
shuffle_caption = false
caption_extension = ".caption"
keep_tokens = 1

[[datasets]]
resolution = 64
batch_size = 2
enable_bucket = true
min_bucket_reso = 32
max_bucket_reso = 128
bucket_reso_steps = 32

  [[datasets.subsets]]
  image_dir = '{data / "img"}'
  num_repeats = 2
  class_tokens = "sks circle"
""", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--pretrained_model_name_or_path", str(env["ckpt"]), "--dataset_config", str(toml_file),
            "--output_dir", str(out), "--output_name", "sdxl_lora", "--save_model_as", "safetensors",
            "--network_module", "networks.lora", "--network_dim", "4", "--network_alpha", "1",
            "--text_encoder_lr", "1e-4", "2e-4", "--unet_lr", "1e-3", "--learning_rate", "1e-3",
            "--optimizer_type", "AdamW", "--lr_scheduler", "cosine_with_restarts", "--lr_warmup_steps", "1",
            "--max_train_epochs", "1", "--save_every_n_epochs", "1", "--mixed_precision", "no",
            "--save_precision", "fp16", "--cache_latents", "--cache_latents_to_disk", "--gradient_checkpointing",
            "--no_half_vae", "--sdpa", "--max_token_length", "225", "--seed", "42", "--max_data_loader_n_workers",
            "0", "--persistent_data_loader_workers", "--min_snr_gamma", "5", "--noise_offset", "0.0357"]
    path = sdxl_train_network.main(argv)
    assert path == out / "sdxl_lora.safetensors"
    sd = load_file(path)
    assert all(v.dtype == torch.float16 for v in sd.values())
    assert any(k.startswith("lora_te2_") for k in sd)
    meta = metadata(path)
    assert meta["ss_max_token_length"] == "225" and meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert json.loads(meta["ss_datasets"])[0]["subsets"][0]["class_tokens"] == "sks circle"
    assert sorted(p.name for p in (data / "img").glob("*_sdxl.npz"))  # SDXL latents: sd-scripts' file names


# ---- DyLoRA, block-wise, samples --------------------------------------------------------------------------------
def test_dylora_block_dims_and_samples(env, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sks circle --w 64 --h 64 --s 2 --d 3 --n blurry\n", encoding="utf-8")
    path = sdxl_train_network.main(base_args(env, tmp_path / "dy", 2, "--cache_latents", "--network_module",
                                             "networks.dylora", "--network_args", "unit=2",
                                             "--sample_prompts", str(prompts), "--sample_at_first",
                                             "--sample_every_n_steps", "2"))
    names = module_names(load_file(path))
    assert any(n.startswith("lora_te1_") for n in names) and any(n.startswith("lora_te2_") for n in names)
    assert any(n.startswith("lora_unet_middle_block_1_") for n in names)
    assert metadata(path)["ss_network_module"] == "networks.dylora"
    samples = sorted((tmp_path / "dy" / "sample").glob("*.png"))
    assert len(samples) == 2
    from PIL import Image

    assert Image.open(samples[0]).size == (64, 64)

    dims = ["0"] * 23
    dims[11] = "4"  # middle_block_1 only (SDXL's 23 blocks: 0 = embeddings, 1-9 in, 10-12 middle, 13-21 out)
    path = sdxl_train_network.main(base_args(env, tmp_path / "blocks", 1, "--cache_latents",
                                             "--network_train_unet_only", "--network_args",
                                             "block_dims=" + ",".join(dims), "down_lr_weight=1,1,1,1,1,1,1,1,0.5"))
    names = module_names(load_file(path))
    assert names and all(n.startswith("lora_unet_middle_block_1_") for n in names)


# ---- two processes ----------------------------------------------------------------------------------------------
def test_two_processes_identical_weights(env, tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", str(port), str(ROOT / "sdxl_train_network.py"),
           *base_args(env, tmp_path / "out", 2, "--cache_latents", "--network_train_unet_only",
                      "--cache_text_encoder_outputs_to_disk", "-v")]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=300)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    sums = dict(re.findall(r"rank (\d): LoRA checksum ([0-9a-f]{64})", log))
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"], sums
    assert (tmp_path / "out" / "lora.safetensors").exists()


def test_text_encoder_lr_one_or_two_values():
    from library.models.factory import random_bundle
    from networks import lora

    b = random_bundle("sdxl")
    net = lora.create_network(1.0, 4, 1, b.vae, b.text_encoders, b.unet)
    net.apply_to(b.text_encoders, b.unet)

    def lrs(te_lr):  # noqa: ANN001, ANN202
        groups, names = net.prepare_optimizer_params(te_lr, 1e-3, 5e-4)
        return dict(zip(names, (g.get("lr") for g in groups)))

    assert lrs([1e-4, 2e-4]) == {"textencoder 1": 1e-4, "textencoder 2": 2e-4, "unet": 1e-3}
    assert lrs([1e-4]) == {"textencoder 1": 1e-4, "textencoder 2": 1e-4, "unet": 1e-3}
    assert lrs([]) == lrs(None) == {"textencoder 1": 5e-4, "textencoder 2": 5e-4, "unet": 1e-3}

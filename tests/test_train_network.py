"""train_network.py on the tiny SD1 model: loss falls, determinism, key families, bucketing, sd-scripts
configs, resume, multi-process, Diffusers loading and bad input. Runs the script's `main` as a user would."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
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

import train_network  # noqa: E402
from library.cli import run_main  # noqa: E402
from library.lora_io import precalculate_hashes  # noqa: E402
from library.options.train import TrainConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    from library.models.factory import write_random_checkpoint
    from library.sample_data import make_sample_dataset

    root = tmp_path_factory.mktemp("train")
    ckpt = write_random_checkpoint(root / "tiny-sd1.safetensors", "sd1")
    img = make_sample_dataset(root / "data", num_images=12, resolution=64, seed=0)
    return {"root": root, "ckpt": ckpt, "img": img}


def base_args(env: dict, out: Path, steps: int = 4, *extra: str) -> list[str]:
    return ["--pretrained_model_name_or_path", str(env["ckpt"]), "--train_data_dir", str(env["img"]),
            "--resolution", "64", "--output_dir", str(out), "--output_name", "lora", "--max_train_steps", str(steps),
            "--learning_rate", "5e-3", "--network_dim", "8", "--network_alpha", "8", "--seed", "1",
            "--max_data_loader_n_workers", "0", *extra]


def tb_losses(logdir: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(str(logdir / "**" / "events*"), recursive=True)
    assert files, f"no TensorBoard events under {logdir}"
    acc = EventAccumulator(files[0])
    acc.Reload()
    return [e.value for e in acc.Scalars("loss/current")]


def module_names(path: Path) -> set[str]:
    return {k.split(".")[0] for k in load_file(path)}


def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


# ---- training behaviour ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lierla", "c3lier"])
def test_loss_falls(env, tmp_path, kind):
    # LierLa runs with gradient checkpointing: the text-encoder LoRA must still get gradients through it
    extra = ["--network_args", "conv_dim=4", "conv_alpha=4"] if kind == "c3lier" else ["--gradient_checkpointing"]
    out = tmp_path / "out"
    path = train_network.main(base_args(env, out, 40, "--train_batch_size", "2", "--cache_latents",
                                        "--logging_dir", str(tmp_path / "logs"), *extra))
    losses = tb_losses(tmp_path / "logs")
    assert len(losses) == 40
    first, last = statistics.mean(losses[:10]), statistics.mean(losses[-10:])
    assert last < 0.8 * first, (first, last)
    sd = load_file(path)
    names = module_names(path)
    assert any(n.startswith("lora_te_text_model_encoder_layers_") for n in names)
    # every module trained, TE included: lora_up starts at zero, and 40 Adam steps of lr 5e-3 move a weight that
    # gets gradient by far more than 1e-4. Exempt: the mid block's self-attention q/k. At 64 px its input is a
    # single token, where softmax is constant, so in exact arithmetic q and k get no gradient; in floating point
    # they get rounding noise, which Adam may turn into steps or not, depending on the library versions.
    exempt = {f"lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_{x}" for x in "qk"}
    assert exempt <= names
    moved = {n: float(sd[f"{n}.lora_up.weight"].abs().max()) for n in names - exempt}
    assert min(moved.values()) > 1e-4, sorted(moved.items(), key=lambda kv: kv[1])[:3]
    convs = [k for k, v in sd.items() if k.endswith("lora_down.weight") and v.ndim == 4 and v.shape[-1] == 3]
    assert bool(convs) == (kind == "c3lier")
    # SD1 has 192 LierLa U-Net modules, 278 C3Lier; the tiny model lacks one conv_shortcut (32->32 channels)
    assert len(names) == (12 + 192 if kind == "lierla" else 12 + 277)
    assert all(f"{n}.alpha" in sd for n in names)
    meta = metadata(path)
    assert meta["ss_network_dim"] == "8" and meta["ss_network_module"] == "networks.lora"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_steps"] == "40"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["sshs_model_hash"] == precalculate_hashes(sd, meta)[0]
    assert json.loads(meta["ss_bucket_info"])["buckets"]["0"]["resolution"] == [64, 64]


def test_same_seed_same_file_and_unet_only(env, tmp_path):
    # uncached latents with augmentations exercise the image path; two runs must agree bit for bit
    extra = ["--network_train_unet_only", "--flip_aug", "--color_aug", "--shuffle_caption", "--keep_tokens", "1",
             "--train_batch_size", "2"]
    a = train_network.main(base_args(env, tmp_path / "a", 3, *extra))
    b = train_network.main(base_args(env, tmp_path / "b", 3, *extra))
    sa, sb = load_file(a), load_file(b)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert metadata(a)["sshs_model_hash"] == metadata(b)["sshs_model_hash"]
    assert any(sa[k].abs().sum() > 0 for k in sa if k.endswith("lora_up.weight"))  # it did train
    assert all(n.startswith("lora_unet_") for n in module_names(a))


def test_text_encoder_only_and_samples(env, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# comment\nsks circle --n blurry --w 64 --h 64 --s 2 --d 7 --l 5\n", encoding="utf-8")
    path = train_network.main(base_args(env, tmp_path / "out", 2, "--network_train_text_encoder_only",
                                        "--cache_latents", "--sample_prompts", str(prompts),
                                        "--sample_every_n_steps", "2", "--sample_sampler", "euler_a",
                                        "--vae", str(env["ckpt"])))  # --vae: a full checkpoint's VAE
    assert all(n.startswith("lora_te_") for n in module_names(path))
    samples = list((tmp_path / "out" / "sample").glob("lora_000002_00_*_7.png"))
    assert len(samples) == 1
    from PIL import Image

    assert Image.open(samples[0]).size == (64, 64)


def test_quickstart_config_runs(env, tmp_path, capsys):
    """README command 1's config, pointed at this test's default files and cut to 2 steps; an ignored option is
    noted in one line and the run goes on."""
    out = tmp_path / "out"
    path = train_network.main(["--config_file", str(ROOT / "examples" / "quickstart.toml"),
                               "--pretrained_model_name_or_path", str(env["ckpt"]), "--train_data_dir",
                               str(env["img"]), "--output_dir", str(out), "--logging_dir", str(out / "logs"),
                               "--max_train_epochs", "0", "--max_train_steps", "2", "--sample_prompts",
                               str(ROOT / "examples" / "quickstart_prompts.txt"), "--sample_at_first",
                               "--highvram"])
    assert path == out / "quickstart.safetensors" and len(tb_losses(out / "logs")) == 2
    assert [ln for ln in capsys.readouterr().err.splitlines() if "highvram" in ln] == [
        "INFO: --highvram: ignored (memory is managed by PyTorch here)"]
    assert len(list((out / "sample").glob("quickstart_000000_00_*_1.png"))) == 1
    assert metadata(path)["ss_shuffle_caption"] == "True" and metadata(path)["ss_lr_scheduler"] == "cosine"


def test_network_weights_and_dim_from_weights(env, tmp_path):
    first = train_network.main(base_args(env, tmp_path / "a", 1, "--cache_latents", "--network_dim", "6"))
    # rank from the file, weights loaded before training: zero learning rate keeps them exactly
    again = train_network.main(base_args(env, tmp_path / "b", 1, "--cache_latents", "--network_dim", "2",
                                         "--network_weights", str(first), "--dim_from_weights",
                                         "--learning_rate", "0", "--unet_lr", "1e-30", "--text_encoder_lr", "1e-30"))
    sa, sb = load_file(first), load_file(again)
    assert sa.keys() == sb.keys()
    assert all(v.shape[0] == 6 for k, v in sb.items() if k.endswith("lora_down.weight"))
    assert all(torch.allclose(sa[k], sb[k]) for k in sa)


def test_sd2_v_parameterization(env, tmp_path):
    from library.models.factory import write_random_checkpoint

    ckpt = write_random_checkpoint(tmp_path / "tiny-sd2.safetensors", "sd2")
    argv = base_args(env, tmp_path / "out", 2, "--cache_latents", "--v2", "--v_parameterization",
                     "--max_token_length", "150", "--min_snr_gamma", "5", "--pretrained_model_name_or_path", str(ckpt))
    path = train_network.main(argv)
    meta = metadata(path)
    assert meta["ss_v2"] == "True" and meta["ss_base_model_version"] == "sd_v2_v"
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert meta["modelspec.prediction_type"] == "v" and meta["ss_max_token_length"] == "150"
    names = module_names(path)
    te_layers = {n.split("_layers_")[1].split("_")[0] for n in names if n.startswith("lora_te_")}
    assert te_layers == {"0", "1", "2"}  # the file holds 4 OpenCLIP blocks; the 4th is never run, so no LoRA


# ---- datasets -------------------------------------------------------------------------------------------------
def test_bucketing_three_aspect_ratios(env, tmp_path):
    from PIL import Image

    from library.data.buckets import BucketSelector, make_bucket_resolutions
    from library.data.config import datasets_from_folders
    from library.data.dataset import TrainDataset

    assert len(make_bucket_resolutions((512, 512), 256, 1024, 64)) == 17
    assert len(make_bucket_resolutions((1024, 1024), 256, 2048, 64)) == 41
    sel = BucketSelector((512, 512), True, 256, 1024, 64)
    assert sel.select(1024, 1024).bucket == (512, 512)
    wide, tall = sel.select(1536, 1024), sel.select(1024, 1536)
    assert wide.bucket == (640, 384) and tall.bucket == (384, 640)  # |1.667 - 1.5| is the smallest error
    assert wide.resized == (640, 427)  # scaled so the image covers the bucket, then centre-cropped
    # no upscale: buckets never exceed the image; a small image keeps its size, a big one shrinks to the area
    nu = BucketSelector((512, 512), True, 256, 1024, 64, bucket_no_upscale=True)
    for w, h in ((300, 200), (200, 300), (256, 256), (2000, 1000), (1000, 3000)):
        a = nu.select(w, h)
        assert a.bucket[0] <= a.resized[0] <= w and a.bucket[1] <= a.resized[1] <= h
        assert a.bucket[0] % 64 == 0 and a.bucket[1] % 64 == 0
        assert a.bucket[0] * a.bucket[1] <= 512 * 512
    assert nu.select(300, 200).bucket == (256, 192) and nu.select(300, 200).resized == (300, 200)
    assert nu.select(2000, 1000).bucket == (640, 320) and nu.select(1000, 3000).bucket == (256, 768)

    # the sample dataset (64x64, 96x64, 64x96) at 128 px, 32 px steps: one bucket per aspect ratio
    cli = {**vars(TrainConfig()), "resolution": "128", "enable_bucket": True,
           "min_bucket_reso": 64, "max_bucket_reso": 256, "bucket_reso_steps": 32}
    ds = TrainDataset(datasets_from_folders(env["img"], None, cli))
    sizes: dict = {}
    for r in ds.records:
        sizes.setdefault(Image.open(r.path).size, set()).add(r.bucket)
    assert sizes == {(64, 64): {(128, 128)}, (96, 64): {(160, 96)}, (64, 96): {(96, 160)}}
    counts = {tuple(b["resolution"]): b["count"] for b in ds.bucket_info()["buckets"].values()}
    assert counts == {(128, 128): 60, (160, 96): 30, (96, 160): 30}  # 10 repeats each
    cli["bucket_no_upscale"] = True
    ds = TrainDataset(datasets_from_folders(env["img"], None, cli))
    for r in ds.records:  # images smaller than the area keep their size: never upscaled
        assert r.resized == r.size and r.bucket == r.size


def test_sd_scripts_dataset_toml_and_config_file(env, tmp_path):
    reg = tmp_path / "reg" / "1_circle"
    reg.mkdir(parents=True)
    for p in sorted((env["img"] / "10_sks circle").glob("000[0-2].png")):
        shutil.copy(p, reg / p.name)
    dataset = tmp_path / "dataset.toml"
    dataset.write_text(f"""
[general]
shuffle_caption = true
caption_extension = ".caption"
keep_tokens = 1
enable_bucket = true

[[datasets]]
resolution = 64
batch_size = 2
min_bucket_reso = 64
max_bucket_reso = 128

  [[datasets.subsets]]
  image_dir = '{env["img"] / "10_sks circle"}'
  class_tokens = "sks circle"
  num_repeats = 2

  [[datasets.subsets]]
  is_reg = true
  image_dir = '{reg}'
  class_tokens = "circle"
  num_repeats = 1
""", encoding="utf-8")
    config = tmp_path / "config.toml"
    config.write_text(f"""
[model_arguments]
pretrained_model_name_or_path = "{env["ckpt"]}"
v2 = false

[additional_network_arguments]
network_module = "networks.lora"
network_dim = 4
network_alpha = 2
unet_lr = 1e-3
text_encoder_lr = 5e-4

[optimizer_arguments]
optimizer_type = "AdamW"
learning_rate = "1e-4"
lr_scheduler = "cosine"
lr_warmup_steps = 1
max_grad_norm = 1.0

[dataset_arguments]
cache_latents = true
debug_dataset = false

[training_arguments]
output_dir = "{tmp_path / 'out'}"
output_name = "fromtoml"
save_precision = "fp16"
save_every_n_epochs = 1
train_batch_size = 1
max_train_epochs = 2
seed = 42
mixed_precision = "no"
max_data_loader_n_workers = 0
prior_loss_weight = 1.0
training_comment = "from sd-scripts config"
""", encoding="utf-8")
    path = train_network.main(["--config_file", str(config), "--dataset_config", str(dataset), "--max_train_epochs",
                               "1", "--save_every_n_epochs", "1"])
    assert path == tmp_path / "out" / "fromtoml.safetensors"
    sd = load_file(path)
    assert all(v.dtype == torch.float16 for v in sd.values())  # save_precision, alpha included
    meta = metadata(path)
    assert meta["sshs_model_hash"] == precalculate_hashes(sd, meta)[0]  # hashed after the cast
    assert meta["ss_network_alpha"] == "2.0" and meta["ss_training_comment"] == "from sd-scripts config"
    ds = json.loads(meta["ss_datasets"])[0]
    assert ds["num_train_images"] == 24 and ds["num_reg_images"] == 24  # 3 reg images repeated up to 24
    assert [s["num_repeats"] for s in ds["subsets"]] == [2, 1] and ds["batch_size_per_device"] == 2
    assert meta["ss_num_batches_per_epoch"] == str(24)  # 48 images with repeats / batch 2
    assert meta["ss_lr_scheduler"] == "cosine" and meta["ss_unet_lr"] == "0.001"
    assert not list((tmp_path / "out").glob("fromtoml-0*"))  # the last epoch is the final file only

    out_cfg = tmp_path / "written.toml"
    train_network.main(["--config_file", str(out_cfg), "--output_config", "--network_dim", "16", "--flip_aug"])
    import toml

    assert toml.load(out_cfg) == {"network_dim": 16, "flip_aug": True}


def test_disk_cache_accumulation_rotation_bf16(env, tmp_path):
    import numpy as np

    data = tmp_path / "data" / "1_circle"
    data.mkdir(parents=True)
    for p in sorted((env["img"] / "10_sks circle").glob("000[0-3].*")):
        shutil.copy(p, data / p.name)
    argv = base_args(env, tmp_path / "out", 0, "--train_data_dir", str(data.parent), "--cache_latents_to_disk",
                     "--flip_aug", "--gradient_accumulation_steps", "2", "--max_train_epochs", "4",
                     "--save_every_n_epochs", "1", "--save_last_n_epochs", "2", "--mixed_precision", "bf16",
                     "--full_bf16", "--noise_offset", "0.05", "--min_snr_gamma", "5")
    path = train_network.main(argv)
    npz = sorted(data.glob("*_sd.npz"))
    assert [p.name for p in npz] == ["0000_0064x0064_sd.npz", "0001_0096x0064_sd.npz", "0002_0064x0064_sd.npz",
                                     "0003_0064x0096_sd.npz"]
    with np.load(npz[1]) as f:
        assert f["latents"].shape == (4, 8, 8) and f["latents"].dtype == np.float32
        assert f["latents_flipped"].shape == (4, 8, 8) and list(f["original_size"]) == [96, 64]
        assert len(f["crop_ltrb"]) == 4
    stamps = [p.stat().st_mtime_ns for p in npz]
    saved = sorted(p.name for p in (tmp_path / "out").glob("lora*.safetensors"))
    assert saved == ["lora-000002.safetensors", "lora-000003.safetensors", "lora.safetensors"]  # epoch 1 rotated
    meta = metadata(path)
    assert meta["ss_steps"] == "8" and meta["ss_num_epochs"] == "4"  # 4 batches / 2 accumulated = 2 steps/epoch
    assert meta["ss_mixed_precision"] == "bf16" and meta["ss_gradient_accumulation_steps"] == "2"
    assert all(v.dtype == torch.bfloat16 for v in load_file(path).values())  # full_bf16 saves as trained
    train_network.main([*argv, "--max_train_epochs", "0", "--max_train_steps", "1"])  # reuses the cache files
    assert [p.stat().st_mtime_ns for p in npz] == stamps


# ---- saving, interruption and resume ----------------------------------------------------------------------------
def test_resume_continues_exactly(env, tmp_path):
    extra = ["--cache_latents", "--save_every_n_steps", "3", "--save_state", "--lr_scheduler", "cosine",
             "--optimizer_type", "AdamW", "--flip_aug"]
    full = train_network.main(base_args(env, tmp_path / "a", 6, *extra))
    state = tmp_path / "a" / "lora-step00000003-state"
    saved = json.loads((state / "train_state.json").read_text())
    assert (saved["current_epoch"], saved["current_step"]) == (0, 3)
    assert (saved["network_dim"], saved["optimizer_type"]) == (8, "adamw")  # what --resume compares
    assert (tmp_path / "a" / "lora-step00000003.safetensors").exists()
    assert (tmp_path / "a" / "lora-state").is_dir()  # state at the end, next to the final file
    resumed = train_network.main(base_args(env, tmp_path / "b", 6, *extra, "--resume", str(state)))
    sa, sb = load_file(full), load_file(resumed)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert metadata(resumed)["ss_steps"] == "6"


def test_ctrl_c_keeps_a_resumable_state(env, tmp_path):
    import signal
    import time

    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "train_network.py"), *base_args(env, out, 100000, "--cache_latents",
                                                                       "--save_state", "--save_every_n_steps", "2")]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300  # a busy shared machine can take minutes to start Python, torch and diffusers
    while not (out / "lora-step00000002-state").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    if not (out / "lora-step00000002-state").exists():
        proc.kill()
        pytest.fail(f"no state saved before the deadline: {proc.communicate()[0][-2000:]}")
    proc.send_signal(signal.SIGINT)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, log
    states = sorted(out.glob("lora-step*-state"))
    last = states[-1]
    step = json.loads((last / "train_state.json").read_text())["current_step"]
    assert step >= 2 and "--resume" in log
    assert not list(out.glob(".*partial*")) and not list(out.glob(".*.tmp*"))  # no half-written files
    resumed = train_network.main(base_args(env, tmp_path / "r", step + 1, "--cache_latents", "--resume", str(last)))
    assert metadata(resumed)["ss_steps"] == str(step + 1)


# ---- two processes ----------------------------------------------------------------------------------------------
def test_two_processes_identical_weights(env, tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(ROOT / "train_network.py"), *base_args(env, tmp_path / "out", 3, "--cache_latents", "-v")]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=300)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    sums = dict(re.findall(r"rank (\d): LoRA checksum ([0-9a-f]{64})", log))
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"], sums
    batches = {r: json.loads(b) for r, b in re.findall(r"rank (\d) epoch 1: batches (\[[0-9, ]*\])", log)}
    assert len(batches["0"]) == len(batches["1"]) == 3
    assert not set(batches["0"]) & set(batches["1"])  # each rank trains its own shard
    assert (tmp_path / "out" / "lora.safetensors").exists()


# ---- interoperability -------------------------------------------------------------------------------------------
def test_diffusers_loads_the_lora(env, tmp_path, capsys):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from library.models import load_models

    path = train_network.main(base_args(env, tmp_path / "out", 2, "--cache_latents", "--learning_rate", "5e-2"))
    bundle = load_models(env["ckpt"])
    pipe = StableDiffusionPipeline(vae=bundle.vae, text_encoder=bundle.text_encoders[0],
                                   tokenizer=bundle.tokenizers[0], unet=bundle.unet,
                                   scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad():
        before = bundle.unet(x, t, ctx).sample
        pipe.load_lora_weights(str(path))
        after = bundle.unet(x, t, ctx).sample
    # reference: the same file applied through networks.lora
    import networks.lora as lora

    fresh = load_models(env["ckpt"])
    net, sd = lora.create_network_from_weights(1.0, path, fresh.vae, fresh.text_encoders[0], fresh.unet)
    net.apply_to(fresh.text_encoders[0], fresh.unet)
    net.load_state_dict(sd)
    with torch.no_grad():
        ours = fresh.unet(x, t, ctx).sample
    assert (after - before).abs().max() > 1e-4
    assert torch.allclose(after, ours, atol=1e-5), (after - ours).abs().max()

    # the same file as --base_weights: merged into the model before a new LoRA trains on top
    again = train_network.main(base_args(env, tmp_path / "based", 1, "--cache_latents", "--base_weights", str(path),
                                         "--base_weights_multiplier", "0.5"))
    assert "merged" in capsys.readouterr().err and again.exists()


# ---- bad input --------------------------------------------------------------------------------------------------
def error_of(capsys, argv: list[str]) -> str:
    assert run_main(train_network.main, argv) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_bad_input_messages(env, tmp_path, capsys):
    toml_file = tmp_path / "ds.toml"
    toml_file.write_text(f"[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = '{env['img']}'\n"
                         "num_repeat = 3\n", encoding="utf-8")
    err = error_of(capsys, base_args(env, tmp_path / "o") + ["--dataset_config", str(toml_file)])
    assert "num_repeat" in err and "num_repeats" in err and str(toml_file) in err

    err = error_of(capsys, base_args(env, tmp_path / "o") + ["--train_data_dir", str(tmp_path / "nope")])
    assert str(tmp_path / "nope") in err and "not found" in err

    plain = tmp_path / "plain" / "my images"
    plain.mkdir(parents=True)
    shutil.copy(env["img"] / "10_sks circle" / "0000.png", plain)
    err = error_of(capsys, base_args(env, tmp_path / "o") + ["--train_data_dir", str(plain.parent)])
    assert "my images" in err and "10_my images" in err

    err = error_of(capsys, base_args(env, tmp_path / "o") + ["--mixed_precision", "fp16"])
    assert "fp16" in err and "CPU" in err

    cfg = tmp_path / "cfg.toml"
    cfg.write_text("[training_arguments]\nlearning_rte = 1e-4\n", encoding="utf-8")
    err = error_of(capsys, ["--config_file", str(cfg)])
    assert "learning_rte" in err and "learning_rate" in err
    assert not (tmp_path / "o").exists()  # nothing written by failed runs


def test_broken_image_is_skipped(env, tmp_path, capsys):
    data = tmp_path / "data" / "5_thing"
    data.mkdir(parents=True)
    for p in sorted((env["img"] / "10_sks circle").glob("000[0-3].*")):
        shutil.copy(p, data / p.name)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    argv = base_args(env, tmp_path / "out", 2, "--train_data_dir", str(data.parent))
    path = train_network.main(argv)
    assert path.exists()
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("WARNING")]
    assert any("broken.png" in ln and "skipped" in ln for ln in warnings)
    assert metadata(path)["ss_num_train_images"] == str(4 * 5)

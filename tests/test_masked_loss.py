"""Masked loss on the tiny SD1 model: an all-ones mask trains exactly like no mask; a zero region gives zero
gradient; masks follow flips (live and cached); the disk cache records masks; bad masks are one line; an
sd-scripts dataset TOML with validation_split, conditioning_data_dir and alpha_mask runs unchanged."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_fixtures import base_args, make_env  # noqa: E402

import train_network  # noqa: E402
from library.cli import run_main  # noqa: E402
from library.data.config import DatasetConfig, SubsetConfig  # noqa: E402
from library.data.dataset import BatchRequest, TrainDataset  # noqa: E402
from library.train.objective import Objective, ObjectiveConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    return make_env(tmp_path_factory.mktemp("mask"))


def _copy_images(env: dict, dest: Path, names: str = "000[0-3]") -> Path:
    dest.mkdir(parents=True)
    for p in sorted((env["img"] / "10_sks circle").glob(f"{names}.*")):
        shutil.copy(p, dest / p.name)
    return dest


def test_all_ones_mask_trains_exactly_like_no_mask(env, tmp_path):
    ones = tmp_path / "ones"
    ones.mkdir()
    for p in (env["img"] / "10_sks circle").glob("*.png"):
        w, h = Image.open(p).size
        Image.new("L", (w // 2 + 3, h // 2 + 1), 255).save(ones / p.name)  # any size: fitted to the image
    plain = base_args(env, tmp_path / "a", 3)
    masked = base_args(env, tmp_path / "b", 3, "--masked_loss", "--conditioning_data_dir", str(ones))
    a = load_file(train_network.main(plain))
    b = load_file(train_network.main(masked))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_zero_region_gives_zero_gradient():
    objective = Objective(ObjectiveConfig())
    pred = torch.randn(2, 4, 8, 8, requires_grad=True)
    masks = torch.ones(2, 64, 64)
    masks[:, :, :32] = 0  # left half of the image ignored
    t = torch.tensor([100, 700])
    loss_map = objective.loss_map(pred, torch.randn(2, 4, 8, 8), t, masks)
    assert torch.all(loss_map[..., :4] == 0) and torch.all(loss_map[..., 4:] > 0)
    objective.loss(pred, torch.randn(2, 4, 8, 8), t, None, masks).backward()
    assert torch.all(pred.grad[..., :4] == 0) and torch.all(pred.grad[..., 4:].abs() > 0)
    half = torch.ones(1, 64, 64) * 0.5  # a grey mask halves the loss (sd-scripts: no renormalisation)
    p, tgt = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    assert torch.allclose(objective.loss(p, tgt, t[:1], None, half), objective.loss(p, tgt, t[:1]) * 0.5)


def _asymmetric(folder: Path) -> Path:
    """An image whose left third is white and a mask marking exactly those pixels."""
    img_dir, mask_dir = folder / "img", folder / "mask"
    img_dir.mkdir(parents=True)
    mask_dir.mkdir()
    arr = np.zeros((64, 96, 3), np.uint8)
    arr[:, :32] = 255
    Image.fromarray(arr).save(img_dir / "a.png")
    Image.fromarray(arr[:, :, 0]).resize((48, 32)).save(mask_dir / "a.png")  # half size
    return folder


@pytest.mark.parametrize("cached", [False, True])
def test_masks_follow_flips_and_crops(tmp_path, cached):
    from library.data.latents import cache_latents

    root = _asymmetric(tmp_path)
    sub = SubsetConfig(root / "img", flip_aug=True, conditioning_data_dir=root / "mask")
    ds = TrainDataset([DatasetConfig((64, 64), subsets=[sub])], seed=3, cache_latents=cached)
    r = ds.records[0]
    assert r.bucket == (64, 64) and r.resized == (96, 64)  # centre crop cuts 16 px on each side
    if cached:
        vae = _FakeVAE()
        cache_latents(ds.records, vae, show_progress=False)
        assert r.mask is not None and r.latents_flipped is not None
    flips = set()
    expected = torch.zeros(64, 64)
    expected[:, :16] = 1  # white columns 16..31 of the 96-wide image land at 0..15 after the centre crop
    sharp = torch.ones(64, dtype=torch.bool)
    sharp[13:19] = False  # the half-size mask is blurred by upscaling around its edge
    for pos in range(12):
        batch = ds[BatchRequest((0,), 0, pos)]
        mask = batch["masks"][0]
        assert mask.shape == (64, 64)
        if cached:  # the fake VAE's latents are the image pooled 8x: white where the image is white
            white = batch["latents"][0][0] > 0
            flipped = bool(white[:, -1].all())
            assert torch.equal(white, expected[::8, ::8].flip(-1) > 0.5 if flipped else expected[::8, ::8] > 0.5)
        else:
            white = batch["images"][0, 0] > 0
            flipped = bool(white[:, -1].all())
            assert torch.equal(white, (expected.flip(-1) if flipped else expected) > 0.5)
        flips.add(flipped)
        want, cols = (expected.flip(-1), sharp.flip(-1)) if flipped else (expected, sharp)
        assert torch.allclose(mask[:, cols], want[:, cols], atol=0.02), (pos, flipped)
    assert flips == {False, True}


class _FakeVAE(torch.nn.Module):
    """Latents = the image downsampled 8x (enough to see which way round a cached sample is)."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(block_out_channels=[1, 1, 1, 1])  # 4 levels: 8x, as the pooling

    def encode(self, images: torch.Tensor):  # noqa: ANN201
        lat = torch.nn.functional.avg_pool2d(images, 8)
        lat = torch.cat([lat, lat[:, :1]], 1)

        class D:
            def sample(self, generator=None):  # noqa: ANN001, ANN202
                return lat
        return type("O", (), {"latent_dist": D()})()


def test_missing_or_unreadable_mask_is_one_line(env, tmp_path, capsys):
    data = _copy_images(env, tmp_path / "img" / "2_thing")
    masks = tmp_path / "masks"
    masks.mkdir()
    for p in sorted(data.glob("*.png"))[:3]:
        Image.new("L", (8, 8), 255).save(masks / p.name)
    args = base_args(env, tmp_path / "o", 1, "--masked_loss", "--conditioning_data_dir", str(masks))
    args[args.index("--train_data_dir") + 1] = str(data.parent)
    assert run_main(train_network.main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(data / "0003.png") in err[0], err
    (masks / "0003.png").write_bytes(b"not an image")
    assert run_main(train_network.main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(data / "0003.png") in err[0] and "mask" in err[0], err
    assert not (tmp_path / "o").exists()


def test_sd_scripts_toml_with_validation_masks_and_alpha(env, tmp_path):
    from safetensors import safe_open

    masked = _copy_images(env, tmp_path / "masked", "000[0-5]")
    alpha = tmp_path / "alpha"
    alpha.mkdir()
    for p in sorted((env["alpha"] / "10_sks circle").glob("000[6-9].*")):
        shutil.copy(p, alpha / p.name)
    toml_file = tmp_path / "dataset.toml"
    toml_file.write_text(f"""[general]
shuffle_caption = true
caption_extension = ".caption"
keep_tokens = 1

[[datasets]]
resolution = 64
batch_size = 2
validation_split = 0.25
validation_seed = 42

  [[datasets.subsets]]
  image_dir = '{masked}'
  conditioning_data_dir = '{env["masks"]}'
  num_repeats = 2

  [[datasets.subsets]]
  image_dir = '{alpha}'
  alpha_mask = true
  num_repeats = 2
""", encoding="utf-8")
    out = tmp_path / "o"
    args = base_args(env, out, 3, "--dataset_config", str(toml_file), "--masked_loss", "--cache_latents_to_disk")
    path = train_network.main(args)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_num_validation_images"] == "2"  # ceil(n·0.75) of each subset train: 1 of 6 + 1 of 4 held out
    caches = sorted(masked.glob("*.npz")) + sorted(alpha.glob("*.npz"))
    assert len(caches) == 10  # training and validation images
    for c in caches:
        with np.load(c) as npz:
            assert npz["alpha_mask"].shape == (npz["latents"].shape[1] * 8, npz["latents"].shape[2] * 8)
    with np.load(alpha / next(p.name for p in caches if p.parent == alpha)) as npz:
        assert 0 < npz["alpha_mask"].mean() < 0.5  # the circle, not the whole image
    # the cache records the mask: without masks the files are encoded again, without the key
    plain = base_args(env, tmp_path / "p", 1, "--dataset_config", str(toml_file), "--cache_latents_to_disk")
    train_network.main(plain)
    for c in caches:
        with np.load(c) as npz:
            assert ("alpha_mask" in npz) == (c.parent == alpha)


def test_folder_masks_apply_to_training_images_only(env, tmp_path):
    from library.data.config import datasets_from_folders

    reg = tmp_path / "reg" / "1_circle"
    reg.mkdir(parents=True)
    cli = {"masked_loss": True, "conditioning_data_dir": str(env["masks"]), "resolution": "64"}
    (ds,) = datasets_from_folders(env["img"], reg.parent, cli)
    assert [(s.is_reg, s.conditioning_data_dir) for s in ds.subsets] == [(False, env["masks"]), (True, None)]
    (ds,) = datasets_from_folders(env["img"], None, {**cli, "masked_loss": False})  # masks only with --masked_loss
    assert ds.subsets[0].conditioning_data_dir is None

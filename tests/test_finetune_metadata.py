"""Fine-tuning metadata datasets, --debug_dataset and face crops on the tiny SD1 model: the three finetune/ tools
turn a captioned folder into a metadata JSON with buckets and sd-scripts-format latents that trains; the same
images as a DreamBooth folder plan the same batches with the same captions and buckets; dataset TOMLs mix the two
kinds per dataset as sd-scripts allows; --debug_dataset writes one PNG per sample and trains nothing; a file named
with face numbers is cropped around its face at the size the range asks for."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_fixtures import base_args  # noqa: E402

import train_network  # noqa: E402
from finetune import merge_captions_to_metadata, merge_dd_tags_to_metadata, prepare_buckets_latents  # noqa: E402
from library.cli import run_main  # noqa: E402
from library.data.dataset import BatchRequest, TrainDataset  # noqa: E402
from library.data.face_crop import face_from_name  # noqa: E402
from library.options.parse import parse_training_args  # noqa: E402
from library.train.setup import dataset_configs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
BUCKETS = ["--enable_bucket", "--min_bucket_reso", "32", "--max_bucket_reso", "128", "--bucket_reso_steps", "32"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_checkpoints) -> dict[str, Path]:  # noqa: ANN001
    """The session's tiny SD1 and the 12 sample images of mixed aspect ratios (no masks: not used here)."""
    from library.sample_data import make_sample_dataset

    root = tmp_path_factory.mktemp("ft")
    return {"ckpt": tiny_checkpoints["sd1"], "img": make_sample_dataset(root / "data", num_images=12, resolution=64,
                                                                         seed=0)}


@pytest.fixture(scope="module")
def prepared(env, tmp_path_factory) -> dict[str, Path]:
    """The sample images in their own folder, with tag files, run through the three finetune tools."""
    root = tmp_path_factory.mktemp("ftmeta")
    images = root / "images"
    shutil.copytree(env["img"] / "10_sks circle", images)
    for p in images.glob("*.png"):
        p.with_suffix(".txt").write_text(f"tag{int(p.stem) % 3}, shared tag\n", encoding="utf-8")
    cap, tags, lat = root / "meta_cap.json", root / "meta_cap_dd.json", root / "meta_lat.json"
    assert run_main(merge_captions_to_metadata.main, [str(images), str(cap)]) == 0
    assert run_main(merge_dd_tags_to_metadata.main, [str(images), str(tags), "--in_json", str(cap)]) == 0
    assert run_main(prepare_buckets_latents.main, [str(images), str(tags), str(lat), str(env["ckpt"]),
                                                   "--max_resolution", "64,64", "--min_bucket_reso", "32",
                                                   "--max_bucket_reso", "128", "--bucket_reso_steps", "32",
                                                   "--batch_size", "4", "--flip_aug"]) == 0
    return {"images": images, "cap": cap, "tags": tags, "lat": lat}


def test_tools_write_sd_scripts_metadata_and_latents(prepared):
    images = sorted(prepared["images"].glob("*.png"))
    meta = json.loads(prepared["lat"].read_text(encoding="utf-8"))
    assert sorted(meta) == [p.stem for p in images]
    first = meta[images[0].stem]
    assert first["caption"] == images[0].with_suffix(".caption").read_text(encoding="utf-8").strip()
    assert first["tags"] == "tag0, shared tag"
    sizes = {p.stem: Image.open(p).size for p in images}
    for stem, entry in meta.items():
        w, h = entry["train_resolution"]
        with np.load(prepared["images"] / f"{stem}.npz") as npz:  # sd-scripts' names and shapes
            assert set(npz.files) == {"latents", "original_size", "crop_ltrb", "latents_flipped"}
            assert npz["latents"].shape == npz["latents_flipped"].shape == (4, h // 8, w // 8)
            assert tuple(npz["original_size"]) == sizes[stem]
    assert len({tuple(e["train_resolution"]) for e in meta.values()}) > 1  # the images fall in several buckets
    # a missing tag file leaves that entry without tags (sd-scripts would stop with a traceback)
    (prepared["images"] / "0000.txt").rename(prepared["images"] / "0000.off")
    try:
        out = prepared["cap"].parent / "partial.json"
        assert run_main(merge_dd_tags_to_metadata.main, [str(prepared["images"]), str(out)]) == 0
        assert "0000" not in json.loads(out.read_text(encoding="utf-8"))
    finally:
        (prepared["images"] / "0000.off").rename(prepared["images"] / "0000.txt")


def test_metadata_dataset_trains_from_its_latents(env, prepared, tmp_path, monkeypatch):
    argv = base_args(env, tmp_path / "o", 3, *BUCKETS, "--in_json", str(prepared["lat"]), "--flip_aug",
                     "--train_batch_size", "2")
    argv[argv.index("--train_data_dir") + 1] = str(prepared["images"])

    def no_encoding(*a: object, **k: object) -> None:
        raise AssertionError("an image was encoded although its latents were prepared")

    monkeypatch.setattr("library.data.latents.encode", no_encoding)
    lora = load_file(train_network.main(argv))
    ups = [v for k, v in lora.items() if k.endswith("lora_up.weight")]
    assert ups and all(torch.isfinite(v).all() for v in ups) and any(v.abs().sum() > 0 for v in ups)  # trained


def _first_batches(argv: list[str], n: int = 6) -> list[tuple[list[str], tuple[int, int], list[str]]]:
    cfg = parse_training_args(argv)
    ds = TrainDataset(dataset_configs(cfg), seed=5)
    plan = ds.plan_epoch(0)
    out = []
    for position in range(n):
        batch = ds[BatchRequest(tuple(plan[position]), 0, position)]
        bucket = tuple(batch["size_cond"][0, 4:].tolist())
        out.append(([p.name for p in batch["paths"]], bucket, batch["captions"]))
    return out


def test_same_images_as_dreambooth_folder_give_same_batches(env, prepared):
    common = ["--resolution", "64", *BUCKETS, "--train_batch_size", "3", "--shuffle_caption", "--keep_tokens", "1",
              "--caption_tag_dropout_rate", "0.2", "--flip_aug"]
    dreambooth = _first_batches([*common, "--train_data_dir", str(env["img"])])
    metadata = _first_batches([*common, "--train_data_dir", str(prepared["images"]), "--in_json",
                               str(prepared["cap"]), "--dataset_repeats", "10"])
    assert metadata == dreambooth
    assert len({b for _, b, _ in dreambooth}) > 1  # several buckets, shuffled tags: a comparison that can fail


def test_dataset_toml_mixes_kinds_per_dataset(env, prepared, tmp_path, capsys):
    good = tmp_path / "mixed.toml"
    good.write_text(f"""[general]
resolution = 64
[[datasets]]
  [[datasets.subsets]]
  image_dir = '{env["img"] / "10_sks circle"}'
  num_repeats = 2
[[datasets]]
batch_size = 2
  [[datasets.subsets]]
  metadata_file = '{prepared["tags"]}'
  image_dir = '{prepared["images"]}'
""", encoding="utf-8")
    ds = TrainDataset(dataset_configs(parse_training_args(["--dataset_config", str(good)])), seed=1)
    fine = [r for r in ds.records if r.dataset_index == 1]
    assert len(fine) == 12 and ds.num_train_images == 12 * 2 + 12
    assert {r.caption.rsplit(",", 2)[-1].strip() for r in fine} == {"shared tag"}  # caption,tags as sd-scripts
    assert "meta_cap_dd.json" in ds.dataset_dirs()
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text(encoding="utf-8").replace("[[datasets]]\nbatch_size = 2\n", ""), encoding="utf-8")
    assert run_main(train_network.main, ["--dataset_config", str(bad), "--debug_dataset"]) == 2
    assert "cannot share a dataset" in capsys.readouterr().err
    reg = tmp_path / "reg.toml"
    reg.write_text(good.read_text(encoding="utf-8") + "  is_reg = true\n", encoding="utf-8")
    assert run_main(train_network.main, ["--dataset_config", str(reg), "--debug_dataset"]) == 2
    assert "'is_reg' is for DreamBooth subsets" in capsys.readouterr().err


def test_jsonl_and_full_path_keys(prepared, tmp_path):
    images = sorted(prepared["images"].glob("*.png"))[:3]
    lines = [json.dumps({"image_path": str(p), "caption": f"c{i}", "tags": "t"}) for i, p in enumerate(images)]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = TrainDataset(dataset_configs(parse_training_args(["--in_json", str(jsonl), "--resolution", "64"])), seed=1)
    assert [(r.path, r.caption) for r in ds.records] == [(p, f"c{i},t") for i, p in enumerate(images)]


def test_debug_dataset_writes_one_png_per_sample_and_trains_nothing(env, tmp_path):
    out = tmp_path / "o"
    argv = base_args(env, out, 2, "--debug_dataset", "--train_batch_size", "3", "--flip_aug", "--shuffle_caption",
                     "--caption_prefix", "pre", "--keep_tokens", "1")
    argv[argv.index("--pretrained_model_name_or_path") + 1] = str(tmp_path / "never-loaded.safetensors")
    assert train_network.main(argv) is None
    folder = out / "debug_dataset"
    pngs = sorted(folder.glob("*.png"))
    lines = (folder / "captions.txt").read_text(encoding="utf-8").splitlines()
    assert len(pngs) == len(lines) == 6  # 2 steps of 3 images
    assert [line.split("\t")[0] for line in lines] == [p.name for p in pngs]
    assert all(Image.open(p).size == (64, 64) for p in pngs)
    assert all("\tcaption 'pre sks circle, " in line for line in lines)  # the kept tag first, the rest shuffled
    assert all(Image.open(p).text["caption"].startswith("pre ") for p in pngs)
    assert not list(out.glob("*.safetensors"))


def test_face_crop_centres_the_face_at_the_asked_size(tmp_path):
    folder = tmp_path / "1_face"
    folder.mkdir()
    img = np.full((256, 320, 3), 40, np.uint8)
    img[100:140, 180:220] = (250, 20, 20)  # a 40 px "face" centred at (200, 120)
    Image.fromarray(img).save(folder / "me_200_120_40_40.png")
    (folder / "me.caption").write_text("a face", encoding="utf-8")  # the caption without the face numbers
    assert face_from_name(folder / "me_200_120_40_40.png") == (200, 120, 40, 40)
    assert face_from_name(folder / "plain_name.png") is None
    cfg = parse_training_args(["--train_data_dir", str(tmp_path), "--resolution", "64", "--face_crop_aug_range",
                               "2.0,2.0"])
    ds = TrainDataset(dataset_configs(cfg), seed=1)
    batch = ds[BatchRequest((0,), 0, 0)]
    assert batch["captions"] == ["a face"]
    pixels = ((batch["images"][0] + 1) * 127.5).round().permute(1, 2, 0).numpy()
    red = (pixels[:, :, 0] > 150) & (pixels[:, :, 1] < 100)
    ys, xs = np.nonzero(red)
    # range 2.0: the face's side is 64 / 2 = 32 px, in the middle of the 64 px crop
    assert 30 <= xs.max() - xs.min() + 1 <= 34 and 30 <= ys.max() - ys.min() + 1 <= 34
    assert abs(xs.mean() - 31.5) <= 1.5 and abs(ys.mean() - 31.5) <= 1.5
    assert run_main(train_network.main, ["--train_data_dir", str(tmp_path), "--resolution", "64",
                                         "--face_crop_aug_range", "4,2", "--debug_dataset"]) == 2

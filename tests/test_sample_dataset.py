"""Tests for the procedural sample dataset (``library.sample_data`` and ``tools/make_sample_dataset.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from library import sample_data  # noqa: E402
from library.sample_data import image_sizes, make_sample_dataset  # noqa: E402

CONCEPT_DIR = "10_sks circle"


def _tree(root: Path) -> dict[str, bytes]:
    """Map every file under ``root`` (relative POSIX path) to its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_captions_and_sizes(tmp_path: Path) -> None:
    train_dir = make_sample_dataset(tmp_path / "ds", num_images=12, resolution=64, seed=0)
    assert train_dir == tmp_path / "ds" / "img"
    assert [p.name for p in train_dir.iterdir()] == [CONCEPT_DIR]
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["img"]  # no staging leftovers

    concept = train_dir / CONCEPT_DIR
    pngs = sorted(concept.glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:04d}.png" for i in range(12)]
    assert len(list(concept.iterdir())) == 24  # one caption per image, nothing else

    sizes = []
    for png in pngs:
        caption = png.with_suffix(".caption").read_text(encoding="utf-8")
        assert caption.endswith("\n") and caption.count("\n") == 1
        parts = caption.strip().split(", ")
        assert parts[:2] == ["sks circle", "red"]
        assert parts[2].startswith("on ") and parts[2].endswith(" background")
        assert parts[3] in {"small", "medium", "large"}
        with Image.open(png) as im:
            assert im.mode == "RGB"
            sizes.append(im.size)
    assert sizes == image_sizes(12, 64, True)
    assert set(sizes) == {(64, 64), (96, 64), (64, 96)}


def test_every_image_contains_the_red_circle(tmp_path: Path) -> None:
    train_dir = make_sample_dataset(tmp_path, num_images=8, seed=3)
    for png in sorted((train_dir / CONCEPT_DIR).glob("*.png")):
        with Image.open(png) as im:
            reds = sum(1 for r, g, b in im.getdata() if r > 180 and g < 80 and b < 80)
        assert reds >= 20, png.name


def test_square_only_and_resolution(tmp_path: Path) -> None:
    train_dir = make_sample_dataset(tmp_path, num_images=5, resolution=128, aspect_ratios=False)
    for png in (train_dir / CONCEPT_DIR).glob("*.png"):
        with Image.open(png) as im:
            assert im.size == (128, 128)
    assert image_sizes(4, 128, True) == [(128, 128), (192, 128), (128, 128), (128, 192)]


def test_deterministic_for_same_seed(tmp_path: Path) -> None:
    a = _tree(make_sample_dataset(tmp_path / "a", seed=7))
    b = _tree(make_sample_dataset(tmp_path / "b", seed=7))
    assert a and a == b
    c = _tree(make_sample_dataset(tmp_path / "c", seed=8))
    assert a.keys() == c.keys() and a != c


def test_existing_output_and_overwrite(tmp_path: Path) -> None:
    make_sample_dataset(tmp_path, num_images=4)
    with pytest.raises(FileExistsError):
        make_sample_dataset(tmp_path, num_images=2)
    assert len(list((tmp_path / "img" / CONCEPT_DIR).glob("*.png"))) == 4
    make_sample_dataset(tmp_path, num_images=2, overwrite=True)
    assert len(list((tmp_path / "img" / CONCEPT_DIR).glob("*.png"))) == 2


def test_no_partial_output_on_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_render = sample_data._render

    def failing_render(scene: object) -> Image.Image:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real_render(scene)  # type: ignore[arg-type]

    monkeypatch.setattr(sample_data, "_render", failing_render)
    out = tmp_path / "new"
    with pytest.raises(RuntimeError):
        make_sample_dataset(out, num_images=6)
    assert not out.exists()


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_sample_dataset(tmp_path, num_images=0)
    with pytest.raises(ValueError):
        make_sample_dataset(tmp_path, resolution=8)


def test_cli_script(tmp_path: Path) -> None:
    script = ROOT / "tools" / "make_sample_dataset.py"
    cmd = [sys.executable, str(script), str(tmp_path / "cli"), "--num_images", "3", "--seed", "7"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=tmp_path)
    cli_tree = _tree(tmp_path / "cli" / "img")
    lib_tree = _tree(make_sample_dataset(tmp_path / "lib", num_images=3, seed=7))
    assert cli_tree == lib_tree and len(cli_tree) == 6
    cmd_sq = [sys.executable, str(script), str(tmp_path / "sq"), "--num_images", "2", "--no_aspect_ratios"]
    subprocess.run(cmd_sq, check=True, capture_output=True, cwd=tmp_path)
    for png in (tmp_path / "sq" / "img" / CONCEPT_DIR).glob("*.png"):
        with Image.open(png) as im:
            assert im.size == (64, 64)
    again = subprocess.run(cmd, capture_output=True, cwd=tmp_path)
    assert again.returncode != 0 and b"already exists" in again.stderr

"""tools/resize_images_to_resolution.py run as a user would, on small generated images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from library.errors import ToolkitError  # noqa: E402
from library.image_resize import fit_size  # noqa: E402
from tools.resize_images_to_resolution import main  # noqa: E402


def _image(path: Path, w: int, h: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    _image(d / "wide.png", 300, 200, 1)
    _image(d / "tall.jpg", 150, 400, 2)
    _image(d / "small.png", 40, 30, 3)
    (d / "wide.txt").write_text("a wide image")
    (d / "wide.caption").write_text("caption")
    (d / "notes.md").write_text("not an image")
    (d / "sub").mkdir()
    return d


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def test_area_aspect_and_names(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    main([str(src), str(dst), "--max_resolution", "128x128,64x64", "--save_as_png"])
    names = sorted(p.name for p in dst.iterdir())
    assert names == sorted(f"{s}+{r}.png" for s in ("wide", "tall", "small") for r in ("128x128", "64x64"))
    for stem, (w0, h0) in {"wide": (300, 200), "tall": (150, 400)}.items():
        for label, area in (("128x128", 128 * 128), ("64x64", 64 * 64)):
            w, h = _size(dst / f"{stem}+{label}.png")
            assert w * h <= area
            assert w * h > 0.95 * area  # shrunk to the target, not far below it
            assert abs(w - h * w0 / h0) <= 1.0 and abs(h - w * h0 / w0) <= 1.0  # aspect kept within a pixel
    assert _size(dst / "small+128x128.png") == (40, 30)  # never upscaled
    assert _size(dst / "small+64x64.png") == (40, 30)


def test_divisible_by_and_jpeg_default(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    main([str(src), str(dst), "--max_resolution", "100x100", "--divisible_by", "16", "--interpolation", "lanczos4"])
    for stem in ("wide", "tall", "small"):
        w, h = _size(dst / f"{stem}+100x100.jpg")
        assert w % 16 == 0 and h % 16 == 0 and w * h <= 100 * 100
    assert _size(dst / "small+100x100.jpg") == (32, 16)  # cropped, not scaled


def test_centre_crop_keeps_the_middle(tmp_path: Path) -> None:
    src, dst = tmp_path / "s", tmp_path / "d"
    src.mkdir()
    arr = np.zeros((20, 36, 3), np.uint8)
    arr[:, 2:34] = 255  # a 2-pixel black border left and right: the crop to 32 wide must remove exactly it
    Image.fromarray(arr).save(src / "a.png")
    main([str(src), str(dst), "--max_resolution", "64x64", "--divisible_by", "16", "--save_as_png"])
    out = np.asarray(Image.open(dst / "a+64x64.png"))
    assert out.shape == (16, 32, 3) and out.min() == 255


def test_associated_files_copied_and_others_ignored(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    main([str(src), str(dst), "--max_resolution", "64x64", "--copy_associated_files"])
    assert (dst / "wide+64x64.txt").read_text() == "a wide image"
    assert (dst / "wide+64x64.caption").read_text() == "caption"
    assert not any("notes" in p.name for p in dst.iterdir())
    assert not (dst / "sub").exists()
    assert len(list(dst.iterdir())) == 5  # 3 images + 2 captions


def test_unreadable_image_warns_and_rest_processed(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    dst = tmp_path / "dst"
    main([str(src), str(dst), "--max_resolution", "64x64"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "broken.png" in warnings[0]
    assert sorted(p.name for p in dst.iterdir()) == ["small+64x64.jpg", "tall+64x64.jpg", "wide+64x64.jpg"]


def test_bad_arguments_give_one_line_errors(src: Path, tmp_path: Path) -> None:
    script = ROOT / "tools" / "resize_images_to_resolution.py"
    r = subprocess.run([sys.executable, str(script), str(src), str(tmp_path / "o"), "--max_resolution", "512by512"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("error: --max_resolution") and "Traceback" not in r.stderr
    with pytest.raises(ToolkitError, match="divisible_by"):
        main([str(src), str(tmp_path / "o"), "--divisible_by", "0"])
    with pytest.raises(ToolkitError, match="missing"):
        main([str(tmp_path / "missing"), str(tmp_path / "o")])


def test_fit_size_properties() -> None:
    for w, h in [(1000, 10), (10, 1000), (513, 511), (4096, 3072)]:
        nw, nh = fit_size(w, h, 512 * 512)
        assert nw * nh <= 512 * 512 and nw <= w and nh <= h

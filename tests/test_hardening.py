"""Misuse of the tools, one test per class, run as a user runs them (`main(argv)` through `run_main`, or a
subprocess): exit code 2, exactly one line `error: <file or option>: <problem>`, every input byte-identical
afterwards and no output file left behind."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gen_img_diffusers  # noqa: E402
from library.cli import run_main  # noqa: E402
from library.files import load_state_dict  # noqa: E402
from library.lora_io import modules_to_state_dict, save_lora  # noqa: E402
from library.random_lora import random_lora  # noqa: E402
from networks import (  # noqa: E402
    extract_lora_from_models,
    merge_lora,
    resize_lora,
    svd_merge_lora,
)
from tools import resize_images_to_resolution  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run best on one thread


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fails(capsys: pytest.CaptureFixture, main, argv: list[str], inputs: list[Path]) -> str:  # noqa: ANN001
    """Run a script's main; assert exit 2, one `error:` line, no traceback, inputs unchanged; return the line."""
    before = {p: digest(p) for p in inputs}
    assert run_main(main, [str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert {p: digest(p) for p in inputs} == before
    return errors[0]


@pytest.fixture(scope="module")
def files(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:  # noqa: ANN001
    d = tmp_path_factory.mktemp("misuse")
    ckpt = tiny_checkpoints["sd1"]
    good = d / "good.safetensors"
    save_lora(good, modules_to_state_dict(random_lora(ckpt, rank=4, seed=1)))
    other = d / "other.safetensors"
    save_lora(other, modules_to_state_dict(random_lora(ckpt, rank=4, seed=2)))
    sd = modules_to_state_dict(random_lora(ckpt, rank=4, seed=3))
    bad_key = sorted(k for k in sd if k.endswith("lora_up.weight"))[5]
    sd[bad_key][0, 0] = float("nan")
    nan = d / "nan.safetensors"
    save_file(sd, nan)  # the toolkit's writers refuse to write NaN
    nan_ckpt = d / "nan.ckpt"
    torch.save(sd, nan_ckpt)
    base, _ = load_state_dict(ckpt)
    base = dict(base)
    ckpt_key = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    base[ckpt_key] = base[ckpt_key].clone()
    base[ckpt_key][0, 0] = float("inf")
    inf_model = d / "inf-model.safetensors"
    save_file({k: v.contiguous() for k, v in base.items()}, inf_model)
    sdxl = d / "sdxl.safetensors"
    save_lora(sdxl, modules_to_state_dict(random_lora(tiny_checkpoints["sdxl"], rank=4, seed=4)))
    return {"ckpt": ckpt, "good": good, "other": other, "nan": nan, "nan_key": bad_key, "nan_ckpt": nan_ckpt,
            "inf_model": inf_model, "inf_key": ckpt_key, "sdxl": sdxl, "dir": d}


# ---- an output that is an input ---------------------------------------------------------------------------------
def test_output_equal_to_an_input_is_refused(files, tmp_path, capsys) -> None:  # noqa: ANN001
    ckpt, good, other = files["ckpt"], files["good"], files["other"]
    line = fails(capsys, merge_lora.main, ["--sd_model", ckpt, "--save_to", ckpt, "--models", good], [ckpt, good])
    assert line.startswith(f"error: --save_to {ckpt}: ") and "--sd_model" in line
    # the same file through another spelling of its path
    alias = Path(os.path.relpath(good, Path.cwd()))
    line = fails(capsys, svd_merge_lora.main, ["--save_to", alias, "--models", other, good, "--new_rank", "2"],
                 [good, other])
    assert "--models" in line and "input" in line
    line = fails(capsys, resize_lora.main, ["--model", good, "--save_to", good, "--new_rank", "2"], [good])
    assert line.startswith(f"error: --save_to {good}: ") and "--model" in line
    line = fails(capsys, resize_lora.main, ["--model", good, "--save_to", tmp_path / "r.safetensors",
                                            "--new_rank", "2", "--report", good], [good])
    assert line.startswith(f"error: --report {good}: ")
    line = fails(capsys, extract_lora_from_models.main, ["--model_org", ckpt, "--model_tuned", files["inf_model"],
                                                         "--save_to", ckpt], [ckpt, files["inf_model"]])
    assert "--model_org" in line
    assert not list(tmp_path.iterdir())


# ---- an output path that cannot be written ----------------------------------------------------------------------
def test_unusable_output_paths_fail_before_any_work(files, tmp_path, capsys) -> None:  # noqa: ANN001
    ckpt, good = files["ckpt"], files["good"]
    folder = tmp_path / "folder"
    folder.mkdir()
    line = fails(capsys, merge_lora.main, ["--sd_model", ckpt, "--save_to", folder, "--models", good], [ckpt, good])
    assert line == f"error: --save_to {folder}: is a folder; give a file name, e.g. {folder / 'out.safetensors'}"
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    below = a_file / "sub" / "out.safetensors"
    line = fails(capsys, svd_merge_lora.main, ["--save_to", below, "--models", good], [good, a_file])
    assert line.startswith(f"error: --save_to {below}: ") and f"{a_file} is a file" in line
    # resize_images: destination is a file; gen_img: --outdir is a file (both tracebacks before)
    src = tmp_path / "img"
    src.mkdir()
    Image.new("RGB", (32, 32)).save(src / "a.png")
    line = fails(capsys, resize_images_to_resolution.main, [src, a_file, "--max_resolution", "16x16"],
                 [src / "a.png", a_file])
    assert line == f"error: dst_img_folder {a_file}: is a file, not a folder"
    line = fails(capsys, gen_img_diffusers.main, ["--ckpt", ckpt, "--outdir", a_file, "--prompt", "x", "--W", "64",
                                                  "--H", "64", "--steps", "1"], [ckpt, a_file])
    assert line == f"error: --outdir {a_file}: is a file, not a folder"
    line = fails(capsys, resize_lora.main, [ckpt, good, "-o", a_file, "--no_cache"], [ckpt, good, a_file])
    assert line == f"error: -o/--output_folder {a_file}: is a file, not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file.txt", "folder", "img"]


def test_read_only_folder_is_refused_before_the_merge(files, tmp_path, capsys) -> None:  # noqa: ANN001
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        try:
            (ro / "probe").write_text("x")
            (ro / "probe").unlink()
            pytest.skip("running as a user who can write into read-only folders (root)")
        except PermissionError:
            pass
        out = ro / "sub" / "merged.safetensors"
        line = fails(capsys, merge_lora.main, ["--sd_model", files["ckpt"], "--save_to", out, "--models",
                                               files["good"]], [files["ckpt"], files["good"]])
        assert line.startswith(f"error: --save_to {out}: folder {ro}, where it would be created, is not writable")
    finally:
        ro.chmod(0o755)


# ---- NaN/Inf in an input ----------------------------------------------------------------------------------------
def test_non_finite_inputs_are_refused_by_every_tool(files, tmp_path, capsys) -> None:  # noqa: ANN001
    ckpt, good, nan, key = files["ckpt"], files["good"], files["nan"], files["nan_key"]
    out = tmp_path / "out.safetensors"
    expected = f"error: {nan}: tensor {key} holds NaN or Inf values"
    for main, argv in [
        (merge_lora.main, ["--sd_model", ckpt, "--save_to", out, "--models", good, nan]),
        (merge_lora.main, ["--save_to", out, "--models", good, nan, "--concat"]),
        (svd_merge_lora.main, ["--save_to", out, "--models", good, nan, "--new_rank", "2"]),
        (resize_lora.main, ["--model", nan, "--save_to", out, "--new_rank", "2"]),
        (gen_img_diffusers.main, ["--ckpt", ckpt, "--outdir", tmp_path / "img", "--prompt", "x", "--W", "64", "--H",
                                  "64", "--steps", "1", "--network_module", "networks.lora", "--network_weights", nan]),
    ]:
        line = fails(capsys, main, argv, [ckpt, good, nan])
        assert line.startswith(expected), line
    # .ckpt LoRA and a checkpoint holding Inf
    line = fails(capsys, resize_lora.main, ["--model", files["nan_ckpt"], "--save_to", out, "--new_rank", "2"],
                 [files["nan_ckpt"]])
    assert line.startswith(f"error: {files['nan_ckpt']}: tensor {key} holds NaN or Inf")
    inf_model, inf_key = files["inf_model"], files["inf_key"]
    for main, argv in [
        (merge_lora.main, ["--sd_model", inf_model, "--save_to", out, "--models", good]),
        (extract_lora_from_models.main, ["--model_org", ckpt, "--model_tuned", inf_model, "--save_to", out]),
        (gen_img_diffusers.main, ["--ckpt", inf_model, "--outdir", tmp_path / "img", "--prompt", "x", "--W", "64",
                                  "--H", "64", "--steps", "1"]),
    ]:
        line = fails(capsys, main, argv, [ckpt, good, inf_model])
        assert line.startswith(f"error: {inf_model}: tensor {inf_key} holds NaN or Inf"), line
    assert not out.exists() and not list((tmp_path / "img").glob("*.png"))
    # the inspection tool still reports them (exit 1, no error line)
    assert run_main(lambda a: _check_exit(a), [str(nan)]) == 0
    assert "1 tensors with NaN/Inf" in capsys.readouterr().out


def _check_exit(argv: list[str]) -> None:
    from networks import check_lora_weights

    assert check_lora_weights.main(argv) == 1


# ---- identical models in extraction ----------------------------------------------------------------------------
def test_extracting_from_identical_models_writes_nothing(files, tmp_path, capsys) -> None:  # noqa: ANN001
    ckpt = files["ckpt"]
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(ckpt.read_bytes())
    out = tmp_path / "x.safetensors"
    line = fails(capsys, extract_lora_from_models.main, ["--model_org", ckpt, "--model_tuned", copy,
                                                         "--save_to", out], [ckpt, copy])
    assert line.startswith(f"error: --model_tuned {copy}: does not differ from --model_org {ckpt}")
    assert "U-Net: no weight differs" in line and "text encoders: no weight differs by more than" in line
    assert not out.exists()


# ---- a closed pipe -----------------------------------------------------------------------------------------------
def test_closed_pipe_ends_quietly(files) -> None:  # noqa: ANN001
    script = ROOT / "networks" / "check_lora_weights.py"
    proc = subprocess.Popen([sys.executable, str(script), str(files["good"]), "--show_all"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # what `| head -1` does
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert first.startswith(b"file: ")
    assert proc.returncode == 0 and err == "", err


# ---- images of every PIL mode -----------------------------------------------------------------------------------
def _mode_images(folder: Path) -> dict[str, tuple[float, float, float]]:
    """One image per mode and the mean RGB a correct 8-bit conversion gives."""
    folder.mkdir()
    grey16 = np.full((32, 32), 30000, dtype=np.uint16)  # 30000/65535 -> 116.7 in 8 bits
    Image.fromarray(grey16).save(folder / "grey16.png")
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb).quantize(4).save(folder / "palette.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=100)
    la = np.stack([np.full((32, 32), 90, np.uint8), np.full((32, 32), 128, np.uint8)], -1)
    Image.fromarray(la, "LA").save(folder / "la.png")
    Image.fromarray(np.dstack([rgb, np.full((32, 32), 10, np.uint8)]), "RGBA").save(folder / "rgba.png")
    Image.fromarray(np.full((32, 32), 0.25, np.float32), "F").save(folder / "float.tiff")
    return {"grey16": (116.7,) * 3, "palette": (200, 100, 50), "cmyk": (200, 100, 50), "la": (90,) * 3,
            "rgba": (200, 100, 50), "float": (63.75,) * 3}


def test_images_of_every_mode_have_the_right_brightness(tmp_path) -> None:  # noqa: ANN001
    from library.data.images import load_rgb  # the training loader's reader

    src = tmp_path / "src"
    expected = _mode_images(src)
    dst = tmp_path / "dst"
    assert run_main(resize_images_to_resolution.main, [str(src), str(dst), "--max_resolution", "16x16",
                                                       "--save_as_png"]) == 0
    for stem, rgb in expected.items():
        path = next(src.glob(f"{stem}.*"))
        trained = load_rgb(path)
        assert trained.dtype == np.uint8 and trained.shape == (32, 32, 3)
        assert np.allclose(trained.reshape(-1, 3).mean(0), rgb, atol=3), (stem, trained.reshape(-1, 3).mean(0))
        if path.suffix == ".tiff":  # not an image type of the resize tool
            continue
        resized = np.asarray(Image.open(dst / f"{stem}+16x16.png"))
        assert resized.shape == (16, 16, 3)
        assert np.allclose(resized.reshape(-1, 3).mean(0), rgb, atol=3), (stem, resized.reshape(-1, 3).mean(0))

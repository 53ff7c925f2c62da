"""gen_img_diffusers.py run as a user would (main(argv)) on tiny seeded models: seeds, LoRA, img2img, metadata."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from lora_helpers import make_lora  # noqa: E402

from gen_img_diffusers import main  # noqa: E402
from library.errors import ToolkitError  # noqa: E402

SMALL = ["--W", "64", "--H", "64", "--steps", "3", "--sequential_file_name"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run best on one thread


@pytest.fixture(scope="module")
def sd1_lora(tmp_path_factory) -> Path:  # noqa: ANN001
    return make_lora(tmp_path_factory.mktemp("lora") / "sd1.safetensors", "sd1")


def run(outdir: Path, ckpt: Path, *args: str) -> list[np.ndarray]:
    """Run the script and return its images (sorted by name) as int arrays."""
    main(["--ckpt", str(ckpt), "--outdir", str(outdir), *args])
    return [np.asarray(Image.open(p)).astype(np.int32) for p in sorted(outdir.glob("*.png"))]


def test_seed_network_mul_and_merge(tiny_checkpoints, sd1_lora, tmp_path) -> None:  # noqa: ANN001
    ckpt = tiny_checkpoints["sd1"]
    common = ["--prompt", "a red circle --n blurry", "--seed", "42", "--sampler", "euler_a", *SMALL]
    [base] = run(tmp_path / "a", ckpt, *common)
    [again] = run(tmp_path / "b", ckpt, *common)
    assert np.array_equal(base, again)  # same seed, same image, bit for bit

    lines = tmp_path / "p.txt"
    lines.write_text("a red circle --n blurry --d 42\n# a comment\n\na red circle --n blurry --d 42 --am 1\n")
    net = ["--network_module", "networks.lora", "--network_weights", str(sd1_lora)]
    zero, one = run(tmp_path / "c", ckpt, "--from_file", str(lines), "--network_mul", "0", "--sampler", "euler_a",
                    *net, *SMALL)
    assert np.array_equal(zero, base)  # multiplier 0 is exactly no LoRA
    assert np.abs(one - base).mean() > 1.0  # the LoRA changes the image

    [merged] = run(tmp_path / "d", ckpt, *common, *net, "--network_merge")
    assert np.abs(merged - one).max() <= 2  # merged weights give the unmerged image

    [other] = run(tmp_path / "e", ckpt, *common[:-len(SMALL)], "--seed", "43", *SMALL)
    assert np.abs(other - base).mean() > 1.0


def test_prompt_file_options_batches_and_png_metadata(tiny_checkpoints, tmp_path) -> None:  # noqa: ANN001
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat --w 64 --h 48 --d 7 --s 2 --l 5 --n dog\n"
                       "a cat --w 64 --h 48 --d 7 --s 2 --l 5 --n dog\n"
                       "a tree --ss dpmsolver++ --d 1,2\n")
    out = tmp_path / "out"
    main(["--ckpt", str(tiny_checkpoints["sd1"]), "--outdir", str(out), "--from_file", str(prompts), "--W", "32",
          "--H", "32", "--steps", "2", "--batch_size", "2", "--images_per_prompt", "2", "--sampler", "heun"])
    files = sorted(out.glob("*.png"))
    assert len(files) == 6
    meta = [Image.open(f).text for f in files]
    sizes = [Image.open(f).size for f in files]
    assert sizes == [(64, 48)] * 4 + [(32, 32)] * 2
    assert [m["seed"] for m in meta] == ["7"] * 4 + ["1", "2"]  # --d repeats its last seed, lists give one each
    assert meta[0]["negative-prompt"] == "dog" and meta[0]["scale"] == "5.0" and meta[0]["steps"] == "2"
    assert meta[0]["sampler"] == "heun" and meta[4]["sampler"] == "dpmsolver++" and meta[4]["prompt"] == "a tree"
    assert meta[0]["parameters"].startswith("a cat\nNegative prompt: dog\nSteps: 2, Sampler: heun, CFG scale: 5")
    arrays = [np.asarray(Image.open(f)).astype(np.int32) for f in files]
    for a in arrays[1:4]:  # same seed in a batch of two and across batches: the same image (batched BLAS may round)
        assert np.abs(a - arrays[0]).max() <= 1
    assert np.abs(arrays[4] - arrays[5]).mean() > 1.0


def test_img2img_sizes_and_strength(tiny_checkpoints, tmp_path) -> None:  # noqa: ANN001
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 75, 3), dtype=np.uint8)).save(src / "a.png")
    (src / "notes.txt").write_text("not an image")
    ckpt = str(tiny_checkpoints["sd1"])
    out = tmp_path / "out"
    main(["--ckpt", ckpt, "--outdir", str(out), "--prompt", "a painting", "--image_path", str(src), "--steps", "4",
          "--strength", "0.5", "--seed", "3", "--use_original_file_name"])
    img = Image.open(out / "a.png")
    assert img.size == (72, 56)  # floored to multiples of 8, never the --W/--H default
    assert img.text["strength"] == "0.5" and "Denoising strength: 0.5" in img.text["parameters"]
    out2 = tmp_path / "out2"
    main(["--ckpt", ckpt, "--outdir", str(out2), "--prompt", "a painting --t 1.0", "--image_path", str(src / "a.png"),
          "--steps", "4", "--seed", "3", "--W", "32", "--H", "48", "--use_original_file_name"])
    img2 = Image.open(out2 / "a.png")
    assert img2.size == (32, 48) and img2.text["strength"] == "1.0"
    out3 = tmp_path / "out3"  # no prompt: each source's own PNG metadata gives it, as in sd-scripts
    main(["--ckpt", ckpt, "--outdir", str(out3), "--image_path", str(out), "--steps", "2", "--seed", "1"])
    [img3] = [Image.open(p) for p in out3.glob("*.png")]
    assert img3.text["prompt"] == "a painting" and img3.size == (72, 56)


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_other_families_with_lora(family, tiny_checkpoints, tmp_path) -> None:  # noqa: ANN001
    lora_file = make_lora(tmp_path / "lora.safetensors", family)
    long_prompt = " ".join(["a red circle"] * 30)  # 90 tokens: two 75-token windows
    common = ["--prompt", f"{long_prompt} --d 5", "--W", "64", "--H", "64", "--steps", "2", "--sampler", "dpmsolver++",
              "--clip_skip", "2", "--max_embeddings_multiples", "2"]
    [plain] = run(tmp_path / "a", tiny_checkpoints[family], *common)
    [with_lora] = run(tmp_path / "b", tiny_checkpoints[family], *common, "--network_module", "networks.lora",
                      "--network_weights", str(lora_file), "--network_mul", "1.0")
    assert plain.shape == (64, 64, 3)
    assert np.abs(with_lora - plain).mean() > 0.5


def test_user_errors_are_one_line(tiny_checkpoints, sd1_lora, tmp_path) -> None:  # noqa: ANN001
    ckpt = str(tiny_checkpoints["sd1"])
    cases = [
        (["--ckpt", str(tmp_path / "missing.safetensors"), "--prompt", "x"], "missing.safetensors"),
        (["--ckpt", ckpt], "--prompt or --from_file"),
        (["--ckpt", ckpt, "--prompt", "x", "--xformers"], "xformers"),
        (["--ckpt", ckpt, "--prompt", "x", "--network_weights", str(sd1_lora)], "--network_module"),
        (["--ckpt", str(tiny_checkpoints["sdxl"]), "--prompt", "x", "--network_module", "networks.lora",
          "--network_weights", str(sd1_lora)], "made for SD1/SD2"),
        (["--ckpt", ckpt, "--prompt", "x", "--network_module", "no.such.module", "--network_weights", str(sd1_lora)],
         "no.such.module"),
        (["--ckpt", ckpt, "--from_file", str(tmp_path / "nope.txt")], "nope.txt"),
    ]
    for argv, needle in cases:
        with pytest.raises(ToolkitError, match=needle.replace(".", r"\.").replace("-", r"\-")):
            main([*argv, "--outdir", str(tmp_path / "o"), *SMALL])
    assert not list((tmp_path / "o").glob("*.png")) if (tmp_path / "o").exists() else True


def test_sdxl_img2img_bf16_merged_lora(tiny_checkpoints, tmp_path) -> None:  # noqa: ANN001
    src = tmp_path / "src.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(src)
    lora_file = make_lora(tmp_path / "xl.safetensors", "sdxl")
    out = tmp_path / "out"
    main(["--ckpt", str(tiny_checkpoints["sdxl"]), "--outdir", str(out), "--prompt", "a (red:1.3) circle --d 3",
          "--image_path", str(src), "--steps", "3", "--strength", "0.7", "--bf16", "--network_module", "networks.lora",
          "--network_weights", str(lora_file), "--network_merge"])
    [img] = [Image.open(p) for p in out.glob("*.png")]
    assert img.size == (80, 64) and img.text["networks"] == "xl.safetensors:1 (merged)"
    assert np.asarray(img).std() > 0

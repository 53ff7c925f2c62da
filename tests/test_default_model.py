"""The shipped default model: it loads like any SD1 file and matches its manifest, it follows colour prompts, and
the quickstart LoRA (trained here as README command 1 does, with a fifth of its epochs) changes what "sks" draws while
multiplier 0 gives the base model's image exactly.

Colours are measured here, on the generated pixels: the fraction of pixels whose HSV hue lies near a target hue
with enough saturation and brightness to be that colour rather than grey."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import toml
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gen_img_diffusers  # noqa: E402
import train_network  # noqa: E402
from library.default_model.dataset import write_concept_dataset  # noqa: E402
from library.models import load_models  # noqa: E402

SHIPPED = ROOT / "default" / "sd1-shapes-64.safetensors"
SEEDS = [1, 2, 3, 4]
# hue (degrees) and tolerance: orange sits between red (0) and yellow (52), so its window is narrower
HUES = {"red": (0.0, 15.0), "orange": (33.0, 10.0), "yellow": (52.0, 15.0), "green": (128.0, 15.0),
        "blue": (228.0, 15.0)}


def colour_fraction(image: np.ndarray, colour: str) -> float:
    """Fraction of pixels whose hue is near `colour`'s (HUES), with saturation and value >= 0.45."""
    target, hue_tol = HUES[colour]
    hsv = np.asarray(Image.fromarray(image).convert("HSV"), dtype=np.float64)
    hue, sat, val = hsv[..., 0] * 360 / 255, hsv[..., 1] / 255, hsv[..., 2] / 255
    distance = np.abs((hue - target + 180) % 360 - 180)
    return float(np.mean((distance <= hue_tol) & (sat >= 0.45) & (val >= 0.45)))


def test_colour_fraction_measures_what_it_says() -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    image[:] = (40, 70, 210)  # blue
    image[:3] = (220, 30, 30)  # red: 30%
    image[3:4] = (255, 140, 0)  # orange: 10%
    assert colour_fraction(image, "red") == pytest.approx(0.3)
    assert colour_fraction(image, "orange") == pytest.approx(0.1)
    assert colour_fraction(image, "blue") == pytest.approx(0.6)
    assert colour_fraction(np.full((4, 4, 3), 128, np.uint8), "red") == 0.0  # grey is no colour
    assert colour_fraction(np.full((4, 4, 3), (240, 215, 50), np.uint8), "orange") == 0.0  # yellow is not orange


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run best on one thread


def generate(outdir: Path, prompt: str, *extra: str) -> list[np.ndarray]:
    """gen_img_diffusers.py as in the README's pictures: euler_a, 20 steps, CFG 7.5, 64x64, one image per seed."""
    prompts = outdir / "prompts.txt"
    outdir.mkdir(parents=True)
    prompts.write_text("".join(f"{prompt} --d {s}\n" for s in SEEDS), encoding="utf-8")
    gen_img_diffusers.main(["--ckpt", str(SHIPPED), "--from_file", str(prompts), "--outdir", str(outdir / "img"),
                            "--W", "64", "--H", "64", "--steps", "20", "--sampler", "euler_a", "--scale", "7.5",
                            "--sequential_file_name", *extra])
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted((outdir / "img").glob("*.png"))]


def mean_fraction(images: list[np.ndarray], colour: str) -> float:
    return float(np.mean([colour_fraction(im, colour) for im in images]))


def test_shipped_weights_match_manifest_and_load_as_sd1() -> None:
    manifest = json.loads((SHIPPED.parent / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["file"] == SHIPPED.name
    assert hashlib.sha256(SHIPPED.read_bytes()).hexdigest() == manifest["sha256"]
    assert SHIPPED.stat().st_size <= 20 * 2**20
    bundle = load_models(SHIPPED)
    assert bundle.family == "sd1" and not bundle.v_parameterization
    assert bundle.unet.config.cross_attention_dim == bundle.text_encoders[0].config.hidden_size == 64
    assert bundle.text_encoders[0].config.vocab_size == 49408  # the real CLIP vocabulary
    assert len(bundle.vae.config.block_out_channels) == 3  # 4x VAE: 64x64 images, 16x16 latents
    for model in (bundle.unet, bundle.vae, bundle.text_encoders[0]):
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_base_model_follows_colour_prompts(tmp_path: Path) -> None:
    asked = generate(tmp_path / "a", "a red circle on a blue background")
    other = generate(tmp_path / "b", "a green square on a yellow background")
    red, blue = mean_fraction(asked, "red"), mean_fraction(asked, "blue")
    red_other, blue_other = mean_fraction(other, "red"), mean_fraction(other, "blue")
    print(f"red {red:.3f} vs {red_other:.3f}, blue {blue:.3f} vs {blue_other:.3f}")
    assert red >= 0.04 and red >= 4 * red_other
    assert blue >= 0.3 and blue >= 4 * blue_other
    # and the other prompt draws its own colours
    assert mean_fraction(other, "yellow") >= 0.3 and mean_fraction(other, "green") >= 0.04


def test_quickstart_lora_teaches_the_orange_ring_and_multiplier_zero_is_the_base(tmp_path: Path) -> None:
    """The quickstart (8 of its 40 epochs) trains a LoRA after which "sks on a blue background" draws at least 3x the
    base's orange, still on blue, and `--network_mul 0` gives the base image exactly."""
    config = toml.loads((ROOT / "examples" / "quickstart.toml").read_text(encoding="utf-8"))
    img = write_concept_dataset(tmp_path / "data")
    config["model_arguments"]["pretrained_model_name_or_path"] = str(SHIPPED)
    config["dataset_arguments"]["train_data_dir"] = str(img)
    config["training_arguments"]["max_train_epochs"] = 8  # a fifth of the quickstart: already draws the ring
    config["saving_arguments"].update(output_dir=str(tmp_path / "out"), save_every_n_epochs=100)
    config["logging_arguments"]["logging_dir"] = str(tmp_path / "logs")
    config.pop("sample_prompt_arguments")
    config_file = tmp_path / "quickstart.toml"
    config_file.write_text(toml.dumps(config), encoding="utf-8")
    lora = train_network.main(["--config_file", str(config_file)])
    assert lora is not None and lora.exists()

    prompt = "sks on a blue background"
    net = ["--network_module", "networks.lora", "--network_weights", str(lora)]
    base = generate(tmp_path / "base", prompt)
    learned = generate(tmp_path / "lora", prompt, *net, "--network_mul", "1")
    off = generate(tmp_path / "off", prompt, *net, "--network_mul", "0")
    change = np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(learned, base, strict=True)])
    orange_base, orange = mean_fraction(base, "orange"), mean_fraction(learned, "orange")
    print(f"orange: base {orange_base:.3f}, LoRA {orange:.3f}; blue {mean_fraction(learned, 'blue'):.3f}; "
          f"mean pixel change {change:.1f}")
    assert orange >= 3 * orange_base and orange >= 0.03  # an orange ring where the base drew none
    assert mean_fraction(learned, "blue") >= 0.3  # on the background the prompt asks for
    assert change >= 10  # out of 255: the LoRA redraws the picture
    assert all(np.array_equal(a, b) for a, b in zip(off, base, strict=True))  # multiplier 0 is the base model


def test_latent_disk_cache_of_the_4x_vae_is_reused(tmp_path: Path) -> None:
    """The default's VAE downsamples by 4, not SD's 8: its `.npz` latents (16x16 for 64x64 images) are written at
    that size and a second run takes them as valid instead of encoding again."""
    img = write_concept_dataset(tmp_path / "data", num_images=2)
    args = ["--pretrained_model_name_or_path", str(SHIPPED), "--train_data_dir", str(img), "--resolution", "64",
            "--network_module", "networks.lora", "--network_dim", "2", "--max_train_steps", "1", "--cache_latents",
            "--cache_latents_to_disk", "--caption_extension", ".caption", "--max_data_loader_n_workers", "0",
            "--output_dir", str(tmp_path / "out")]
    train_network.main([*args, "--output_name", "first"])
    files = sorted(img.rglob("*.npz"))
    assert len(files) == 2
    with np.load(files[0]) as npz:
        assert npz["latents"].shape == (4, 16, 16)
    written = [f.stat().st_mtime_ns for f in files]
    train_network.main([*args, "--output_name", "second"])
    assert [f.stat().st_mtime_ns for f in files] == written


def test_make_default_writes_the_concept_dataset_and_checks_the_weights(tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "d"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "make_default.py"), str(out), "--random"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    concept = out / "img" / "10_sks"
    pngs = sorted(concept.glob("*.png"))
    assert len(pngs) == 16 and len(list(concept.glob("*.caption"))) == 16
    captions = {p.with_suffix(".caption").read_text(encoding="utf-8").strip() for p in pngs}
    assert all(c.startswith("sks, on a ") and c.endswith(" background") for c in captions) and len(captions) >= 5
    for p in pngs:  # an orange ring on every image, hollow in the middle
        image = np.asarray(Image.open(p).convert("RGB"))
        assert 0.08 <= colour_fraction(image, "orange") <= 0.5, p.name
    assert (out / SHIPPED.name).read_bytes() == SHIPPED.read_bytes()
    assert load_models(out / "tiny-sd1.safetensors").unet.config.block_out_channels == [32, 32, 64, 64]


def test_pretraining_is_reproducible_and_writes_its_manifest(tmp_path: Path) -> None:
    """tools/pretrain_default.py (a few steps): the same seed writes the same file, its manifest names the hash and
    a command that rebuilds it, and the loss curve is written."""
    import subprocess

    def run(name: str) -> Path:
        out = tmp_path / name / "m.safetensors"
        done = subprocess.run([sys.executable, str(ROOT / "tools" / "pretrain_default.py"), "--out", str(out),
                               "--log_dir", str(tmp_path / name / "log"), "--steps", "3", "--pool", "64",
                               "--norm_pool", "64",
                               "--batch", "4"], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        return out

    first, second = run("a"), run("b")
    assert first.read_bytes() == second.read_bytes()
    manifest = json.loads((first.parent / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert manifest["steps"] == 3 and "--steps 3" in manifest["command"] and "--pool 64" in manifest["command"]
    assert (tmp_path / "a" / "log" / "loss.csv").read_text(encoding="utf-8").count("\n") >= 4
    assert len(load_models(first).vae.config.block_out_channels) == 3


def test_filler_captions_never_name_the_quickstart_concept() -> None:
    """Pretraining captions may start with a word the picture does not show, but never "sks", "orange" or "ring",
    and the template words stay meaningful."""
    from library.default_model import scenes
    from library.tokenizer import load_tokenizers

    fillers = scenes.filler_words(load_tokenizers("sd1")[0].get_vocab())
    assert len(fillers) > 10000 and not {"sks", "orange", "ring", "red", "circle", "background"} & set(fillers)
    rng = np.random.default_rng(0)
    captions = [scenes.caption_scene(rng, fillers=fillers, filler_rate=0.25)[1] for _ in range(2000)]
    words = {w.strip(",") for c in captions for w in c.split()}
    assert not {"sks", "orange", "ring"} & words
    with_filler = [c for c in captions if not c.startswith(("a ", "on a "))]
    assert 0.2 <= len(with_filler) / len(captions) <= 0.3
    assert any(c.split()[1] == "on" for c in with_filler)  # "tulip on a blue background", as "sks on a ..." reads


def test_a_changed_checkpoint_fails_the_manifest_check(tmp_path: Path) -> None:
    from library.default_model import manifest
    from library.errors import ToolkitError

    copy = tmp_path / SHIPPED.name
    data = bytearray(SHIPPED.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    (tmp_path / "manifest.json").write_bytes((SHIPPED.parent / "manifest.json").read_bytes())
    with pytest.raises(ToolkitError, match="does not match"):
        manifest.verify(copy)

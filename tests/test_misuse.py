"""Misuse of the tools (issue 22): each class of mistake ends with one line and exit code 2 (or one warning when
legal but useless), before heavy work, leaving the inputs byte-identical and no output or partial file; and the
legitimate neighbour of each case still works. Cheap: synthetic LoRAs, in-process, no model loads."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import run_main  # noqa: E402
from library.errors import ToolkitError  # noqa: E402
from library.lora_io import save_lora  # noqa: E402
from networks import convert_lora, merge_lora, resize_lora, svd_merge_lora  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ("lora_unet_down_blocks_0_attentions_0_proj_in", "lora_te_text_model_encoder_layers_0_self_attn_q_proj")


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fails(capsys: pytest.CaptureFixture, main, argv: list, inputs: list[Path], folder: Path) -> str:  # noqa: ANN001
    """Run a script's main: exit 2, one `error:` line (the last line, no traceback), inputs unchanged, no new file
    in `folder` (no output, no hidden temporary). Returns the line."""
    before = {p: digest(p) for p in inputs}
    listing = sorted(folder.iterdir())
    assert run_main(main, [str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err and err.strip().splitlines()[-1] == errors[0], err
    assert {p: digest(p) for p in inputs} == before
    assert sorted(folder.iterdir()) == listing
    return errors[0]


def make_lora(path: Path, scale: float = 0.1, rank: int = 4, seed: int = 0, spike: float | None = None) -> Path:
    """A small SD1 LoRA of two modules; `spike`: one value of the first module's down and up set to it (so its
    singular values, which a resize splits between the factors, are spike²)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, name in enumerate(NAMES):
        n = 12 + 4 * i
        sd[f"{name}.lora_down.weight"] = torch.randn(rank, n, generator=g) * scale
        sd[f"{name}.lora_up.weight"] = torch.randn(n, rank, generator=g) * scale
        sd[f"{name}.alpha"] = torch.tensor(float(rank))
    if spike is not None:
        sd[f"{NAMES[0]}.lora_down.weight"][0, 0] = sd[f"{NAMES[0]}.lora_up.weight"][0, 0] = spike
    save_lora(path, sd)
    return path


@pytest.fixture
def loras(tmp_path: Path) -> dict[str, Path]:
    return {"small": make_lora(tmp_path / "small.safetensors"),
            "big": make_lora(tmp_path / "big.safetensors", seed=1, spike=1e5),
            "dir": tmp_path}


# ---- non-finite or overflowing output ------------------------------------------------------------------------
def test_fp16_overflow_is_refused_by_every_writer(loras, capsys) -> None:  # noqa: ANN001
    d, big = loras["dir"], loras["big"]
    out = d / "out.safetensors"
    cases = [
        (convert_lora.main, [big, out, "--to", "kohya", "--save_precision", "fp16"]),
        (merge_lora.main, ["--save_to", out, "--models", big, "--save_precision", "fp16"]),
        (merge_lora.main, ["--save_to", d / "out.ckpt", "--models", big, "--save_precision", "fp16"]),
        (resize_lora.main, ["--model", big, "--save_to", out, "--new_rank", "2", "--save_precision", "fp16"]),
    ]
    for main, argv in cases:
        line = fails(capsys, main, argv, [big], d)
        assert line.startswith(f"error: {argv[argv.index('--save_to') + 1] if '--save_to' in argv else out}: lora_")
        assert "exceeds the fp16 range (max |x| = " in line and line.endswith("save as bf16 or fp32"), line


def test_within_range_fp16_and_bf16_still_save(loras) -> None:  # noqa: ANN001
    d, small, big = loras["dir"], loras["small"], loras["big"]
    assert run_main(convert_lora.main, [str(small), str(d / "a.safetensors"), "--to", "kohya",
                                        "--save_precision", "fp16"]) == 0
    assert {t.dtype for t in load_file(d / "a.safetensors").values()} == {torch.float16}
    assert run_main(convert_lora.main, [str(big), str(d / "b.safetensors"), "--to", "kohya",
                                        "--save_precision", "bf16"]) == 0
    assert all(torch.isfinite(t).all() for t in load_file(d / "b.safetensors").values())


def test_non_finite_ratios_and_inf_results_are_refused(loras, capsys) -> None:  # noqa: ANN001
    d, small = loras["dir"], loras["small"]
    out = d / "out.safetensors"
    for bad in ("inf", "nan"):
        for main in (merge_lora.main, svd_merge_lora.main):
            line = fails(capsys, main, ["--save_to", out, "--models", small, "--ratios", bad], [small], d)
            assert line.startswith(f"error: --ratios {float(bad)}: must be a finite number"), line
    # finite, but the merged product no longer fits float32: refused when written, naming the output
    line = fails(capsys, merge_lora.main, ["--save_to", out, "--models", small, "--ratios", "1e300"], [small], d)
    assert line.startswith(f"error: {out}: lora_") and "holds NaN or Inf values" in line, line


def test_the_save_cast_names_the_output_not_its_temporary_file(tmp_path) -> None:  # noqa: ANN001
    from library.train.guards import save_network

    class Net(torch.nn.Module):
        def save_weights(self, file: str, dtype: torch.dtype, metadata: dict) -> None:
            save_lora(file, {"x.lora_down.weight": torch.full((2, 2), 7e4)}, metadata, dtype)

    out = tmp_path / "lora.safetensors"
    with pytest.raises(ToolkitError) as e:
        save_network(Net(), out, torch.float16, {})
    assert str(e.value) == f"{out}: x.lora_down.weight exceeds the fp16 range (max |x| = 70000); save as bf16 or fp32"
    assert list(tmp_path.iterdir()) == []


# ---- tool ranges --------------------------------------------------------------------------------------------
def test_tool_numeric_ranges(loras, capsys) -> None:  # noqa: ANN001
    d, small = loras["dir"], loras["small"]
    out = d / "out.safetensors"
    for q in ("0", "1.5", "nan", "-0.5"):
        line = fails(capsys, svd_merge_lora.main, ["--save_to", out, "--models", small, "--clamp_quantile", q],
                     [small], d)
        problem = "must be a finite number" if q == "nan" else "must be in (0, 1] (1 or omitted: no clamp)"
        assert line == f"error: --clamp_quantile {float(q)}: {problem}"
    resize = ["--model", small, "--save_to", out, "--new_rank", "2"]
    for extra, expect in [
        (["--dynamic_param", "0.5"], "--dynamic_param 0.5: has no effect without --dynamic_method"),
        (["--dynamic_method", "sv_ratio", "--dynamic_param", "0.5"], "--dynamic_param 0.5: sv_ratio keeps"),
        (["--dynamic_method", "sv_ratio", "--dynamic_param", "inf"], "--dynamic_param inf: must be a finite number"),
        (["--dynamic_method", "sv_fro", "--dynamic_param", "1.5"], "--dynamic_param 1.5: sv_fro keeps"),
        (["--dynamic_method", "sv_cumulative", "--dynamic_param", "0"], "--dynamic_param 0.0: sv_cumulative keeps"),
    ]:
        assert fails(capsys, resize_lora.main, resize + extra, [small], d).startswith(f"error: {expect}")


def test_new_rank_above_the_input_rank_warns(loras, capsys) -> None:  # noqa: ANN001
    d, small = loras["dir"], loras["small"]
    assert run_main(resize_lora.main, ["--model", str(small), "--save_to", str(d / "o.safetensors"),
                                       "--new_rank", "16"]) == 0
    assert "WARNING: --new_rank 16 is above the input's largest rank (4)" in capsys.readouterr().err
    assert run_main(resize_lora.main, ["--model", str(small), "--save_to", str(d / "o.safetensors"),
                                       "--dynamic_method", "sv_fro", "--dynamic_param", "0.9"]) == 0
    assert "WARNING" not in capsys.readouterr().err


# ---- damaged caches are encoded again, never a traceback -------------------------------------------------------
def test_truncated_or_non_finite_caches_are_encoded_again(tmp_path, caplog) -> None:  # noqa: ANN001
    import numpy as np

    from library.data.latents import load_npz
    from library.train.text_cache import load_npz as load_text_npz

    good = tmp_path / "a_sd.npz"
    np.savez(good, latents=np.zeros((4, 8, 8), np.float32))
    assert load_npz(good, (64, 64), False)["latents"].shape == (4, 8, 8)
    truncated, nan = tmp_path / "t_sd.npz", tmp_path / "n_sd.npz"
    truncated.write_bytes(good.read_bytes()[:-40])
    np.savez(nan, latents=np.full((4, 8, 8), np.nan, np.float32))
    assert load_npz(truncated, (64, 64), False) is None and load_npz(nan, (64, 64), False) is None
    assert load_text_npz(truncated, "a cat", "x") is None
    messages = [r.getMessage() for r in caplog.records]
    assert f"{truncated}: unreadable latent cache (File is not a zip file); encoding again" in messages
    assert f"{nan}: the cached latents hold NaN or Inf; encoding again" in messages
    assert f"{truncated}: unreadable text-encoder cache (File is not a zip file); encoding again" in messages


# ---- outputs say their container; inputs are read by their content -------------------------------------------
def test_output_extension_must_say_the_container(loras, capsys) -> None:  # noqa: ANN001
    d, small = loras["dir"], loras["small"]
    line = fails(capsys, convert_lora.main, [small, d / "out.txt", "--to", "kohya"], [small], d)
    assert line == (f"error: output {d / 'out.txt'}: the extension .txt does not say the format; name it "
                    "out.safetensors (or .ckpt/.pt for a torch pickle)")
    line = fails(capsys, merge_lora.main, ["--save_to", d / "merged", "--models", small], [small], d)
    assert "the extension (none) does not say the format" in line
    assert run_main(convert_lora.main, [str(small), str(d / "out.pt"), "--to", "kohya"]) == 0


def test_safetensors_without_extension_is_read_by_its_header(loras, capsys) -> None:  # noqa: ANN001
    d, small = loras["dir"], loras["small"]
    bare = d / "my_lora"
    bare.write_bytes(small.read_bytes())
    assert run_main(resize_lora.main, ["--model", str(bare), "--save_to", str(d / "r.safetensors"),
                                       "--new_rank", "2"]) == 0
    (d / "sub").mkdir()
    line = fails(capsys, merge_lora.main, ["--save_to", d / "m.safetensors", "--models", d / "sub"], [small], d)
    assert line == f"error: {d / 'sub'}: is a folder, expected a .safetensors or .ckpt file"


def test_dylora_split_refuses_a_plain_lora(loras, capsys) -> None:  # noqa: ANN001
    from library.files import load_state_dict
    from networks import extract_lora_from_dylora

    d = loras["dir"]
    sd, _ = load_state_dict(loras["small"])
    plain = d / "plain.safetensors"
    save_lora(plain, sd, {"ss_network_module": "networks.lora"})
    line = fails(capsys, extract_lora_from_dylora.main, ["--model", plain, "--save_to", d / "s.safetensors",
                                                          "--unit", "2"], [plain], d)
    assert line == (f"error: {plain}: not a DyLoRA file (trained with networks.lora); its first ranks are not a "
                    "smaller LoRA. Use resize_lora.py to lower its rank")


def test_check_lora_weights_tells_a_dora_file(loras, capsys) -> None:  # noqa: ANN001
    from library.files import load_state_dict
    from networks import check_lora_weights

    sd, _ = load_state_dict(loras["small"])
    sd = {**sd, f"{NAMES[0]}.dora_scale": torch.ones(1, 12)}
    dora = loras["dir"] / "dora.safetensors"
    save_lora(dora, sd)
    assert check_lora_weights.main([str(dora)]) == 0
    out = capsys.readouterr().out
    assert "kinds: LoRA, LoRA +DoRA(in)" in out  # the summary line and the module's row name the DoRA axis
    assert sum("+DoRA(in)" in line for line in out.splitlines() if line.startswith("lora_") and "+DoRA(in)" in line) == 1
    assert check_lora_weights.main([str(loras["small"])]) == 0
    assert "DoRA" not in capsys.readouterr().out


# ---- masks that cannot train anything --------------------------------------------------------------------------
def test_black_masks_and_alpha_mask_without_alpha(tmp_path, caplog) -> None:  # noqa: ANN001
    from types import SimpleNamespace

    from PIL import Image

    from library.data.masks import attach_masks, check_alpha

    images, masks = tmp_path / "img", tmp_path / "mask"
    images.mkdir()
    masks.mkdir()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(images / "a.png")
    Image.new("RGBA", (16, 16), (9, 9, 9, 0)).save(images / "clear.png")
    Image.new("RGBA", (16, 16), (9, 9, 9, 255)).save(images / "opaque.png")
    Image.new("L", (16, 16), 0).save(masks / "a.png")
    record = SimpleNamespace(path=images / "a.png")
    with pytest.raises(ToolkitError, match=r"mask.a\.png: the mask is all black, so nothing of a\.png would train"):
        attach_masks([record], masks)
    Image.new("L", (16, 16), 255).save(masks / "a.png")
    attach_masks([record], masks)  # a mask that trains something is accepted
    with pytest.raises(ToolkitError, match=r"clear\.png: alpha_mask: the image is fully transparent"):
        check_alpha([SimpleNamespace(path=images / n) for n in ("opaque.png", "clear.png")], True)
    check_alpha([SimpleNamespace(path=images / n) for n in ("opaque.png", "a.png")], True)
    assert [r.getMessage() for r in caplog.records] == [
        f"{images}: alpha_mask: 1 of 2 images have no alpha channel and train on every pixel (e.g. a.png)"]


def test_a_non_finite_loss_names_its_likely_cause() -> None:
    from library.train.guards import check_loss

    ok, bad = torch.zeros(1, 4, 8, 8), torch.full((1, 4, 8, 8), float("nan"))
    nan = torch.tensor(float("nan"))
    with pytest.raises(ToolkitError, match=r"step 3: the loss is nan; .* Likely cause: the batch's latents hold NaN"):
        check_loss(nan, 3, None, (bad, torch.zeros(1, 77, 8), ["a cat"]))
    with pytest.raises(ToolkitError, match=r"Likely cause: the text conditioning of the captions 'a \(cat:9\)'"):
        check_loss(nan, 3, None, (ok, torch.full((1, 77, 8), float("inf")), ["a (cat:9)"]))
    with pytest.raises(ToolkitError, match=r"Lower the learning rate"):
        check_loss(nan, 3, None, (ok, torch.zeros(1, 77, 8), ["a cat"]))
    check_loss(torch.tensor(0.5), 3, None, (bad, bad, []))  # a finite loss is never questioned


def test_library_noise_stays_out_of_the_way(capsys) -> None:  # noqa: ANN001
    import logging

    from library.cli import setup_logging

    setup_logging(0)  # Python warnings go to the py.warnings logger (logging.captureWarnings)
    logging.getLogger("py.warnings").warning("a torch UserWarning")
    logging.getLogger("diffusers.pipelines").warning("a diffusers message")
    logging.getLogger("library.x").warning("y" * 9500)
    err = capsys.readouterr().err
    assert "torch" not in err and "diffusers message" not in err
    assert err.strip() == "WARNING: " + "y" * 400 + " [...]"
    setup_logging(1)  # -v shows them
    logging.getLogger("py.warnings").warning("a torch UserWarning")
    assert "a torch UserWarning" in capsys.readouterr().err
    setup_logging(0)


def test_a_full_disk_names_the_output_not_the_temporary_file(tmp_path, capsys) -> None:  # noqa: ANN001
    import errno

    from library.files import atomic_path

    out = tmp_path / "lora.safetensors"

    def write() -> None:
        with atomic_path(out) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    assert run_main(lambda argv: write()) == 2
    assert capsys.readouterr().err == f"error: {out}: No space left on device\n"
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_conversion_to_fp16_names_the_overflow(tiny_checkpoints, tmp_path, capsys) -> None:  # noqa: ANN001
    """A finite fp32 checkpoint with a weight beyond 65504, converted with --fp16: the output's "exceeds the fp16
    range" line (the cast overflowed; the file is not damaged), nothing written; bf16 still converts."""
    from safetensors.torch import save_file

    from tools import convert_diffusers20_original_sd as convert

    sd = load_file(tiny_checkpoints["sd1"])
    key = next(k for k in sd if k.startswith("model.diffusion_model.") and k.endswith(".weight"))
    sd[key] = sd[key].float().clone()
    sd[key].view(-1)[0] = 1e6
    src = tmp_path / "big.safetensors"
    save_file(sd, src)
    out = tmp_path / "out.safetensors"
    line = fails(capsys, convert.main, [src, out, "--fp16"], [src], tmp_path)
    assert line == f"error: {out}: {key} exceeds the fp16 range (max |x| = 1e+06); save as bf16 or fp32 " \
                   "(nothing written)", line
    assert run_main(convert.main, [str(src), str(out), "--bf16"]) == 0 and out.is_file()

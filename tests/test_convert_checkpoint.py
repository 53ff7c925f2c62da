"""tools/convert_diffusers20_original_sd.py: Diffusers folder <-> single file through the script, on tiny models."""

from __future__ import annotations

import pytest
import torch

from library.cli import run_main
from library.files import load_state_dict, read_metadata
from library.models.factory import random_bundle
from tools import convert_diffusers20_original_sd as convert


def save_with_diffusers(bundle, folder, v_prediction=False, **kwargs):  # noqa: ANN001, ANN201
    """The input folder as diffusers itself writes it (`pipeline.save_pretrained`)."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = DDPMScheduler(prediction_type="v_prediction" if v_prediction else "epsilon")
    if bundle.is_sdxl:
        pipe = StableDiffusionXLPipeline(vae=bundle.vae, text_encoder=bundle.text_encoders[0],
                                         text_encoder_2=bundle.text_encoders[1], tokenizer=bundle.tokenizers[0],
                                         tokenizer_2=bundle.tokenizers[1], unet=bundle.unet, scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(vae=bundle.vae, text_encoder=bundle.text_encoders[0],
                                       tokenizer=bundle.tokenizers[0], unet=bundle.unet, scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, **kwargs)
    return folder


def folder_tensors(folder):  # noqa: ANN001, ANN201
    out = {}
    for f in sorted(folder.glob("*/*.safetensors")):
        sd, _ = load_state_dict(f)
        out.update({f"{f.parent.name}/{k}": v for k, v in sd.items()})
    return out


def assert_identical(a, b):  # noqa: ANN001
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_diffusers_to_single_file_and_back_is_identical(family, tmp_path):  # noqa: ANN001
    from diffusers import DiffusionPipeline

    v_prediction = family == "sd2"  # an SD2 768-v model: its scheduler's prediction type survives the round trip
    src = save_with_diffusers(random_bundle(family, seed=7), tmp_path / "src", v_prediction)
    single, back = tmp_path / "model.safetensors", tmp_path / "back"
    convert.main([str(src), str(single)])
    convert.main([str(single), str(back)])
    assert_identical(folder_tensors(src), folder_tensors(back))
    pipe = DiffusionPipeline.from_pretrained(back, local_files_only=True)  # diffusers' own loader opens the result
    assert type(pipe).__name__ == ("StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline")
    assert pipe.scheduler.config.prediction_type == ("v_prediction" if v_prediction else "epsilon")


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_single_file_to_diffusers_and_back_is_identical(family, tiny_checkpoints, tmp_path):  # noqa: ANN001
    """Keys the models do not use (SD2's unused 24th OpenCLIP block, logit_scale, ...) come back too."""
    folder, back = tmp_path / "diffusers", tmp_path / "back.safetensors"
    convert.main([str(tiny_checkpoints[family]), str(folder)])
    convert.main([str(folder), str(back)])
    original, _ = load_state_dict(tiny_checkpoints[family])
    result, _ = load_state_dict(back)
    if family == "sd2":  # a Diffusers folder has no unused block: the previous block is repeated, as sd-scripts does
        last = "cond_stage_model.model.transformer.resblocks.23."
        original = {k: v for k, v in original.items() if not k.startswith(last)}
        result = {k: v for k, v in result.items() if not k.startswith(last)}
    assert_identical(original, result)


def test_variant_precision_ckpt_and_metadata(tmp_path):  # noqa: ANN001
    bundle = random_bundle("sd1", seed=3)
    for model in (bundle.unet, bundle.vae, bundle.text_encoders[0]):
        model.to(torch.float16)
    src = save_with_diffusers(bundle, tmp_path / "src", variant="fp16")
    kept = tmp_path / "kept.safetensors"
    convert.main([str(src), str(kept), "--variant", "fp16"])  # no precision option: the stored dtype is kept
    assert {v.dtype for v in load_state_dict(kept)[0].values() if v.is_floating_point()} == {torch.float16}
    ckpt = tmp_path / "m.ckpt"
    convert.main([str(src), str(ckpt), "--variant", "fp16", "--float", "--epoch", "3", "--global_step", "70"])
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 3 and saved["global_step"] == 70
    sd = saved["state_dict"]
    assert {v.dtype for v in sd.values() if v.is_floating_point()} == {torch.float32}
    half = tmp_path / "m16.safetensors"
    convert.main([str(ckpt), str(half), "--save_precision_as", "fp16", "--metadata", "{'name': 'tiny', 'res': 512}"])
    result, _ = load_state_dict(half)
    assert set(result) == set(sd)
    assert all(torch.equal(result[k], sd[k].half()) for k in sd if sd[k].is_floating_point())
    assert read_metadata(half) == {"name": "tiny", "res": "512"}


def test_refusals_are_one_line_and_leave_inputs_alone(tiny_checkpoints, tmp_path, capsys):  # noqa: ANN001
    ckpt = tiny_checkpoints["sd1"]
    folder = tmp_path / "diffusers"
    convert.main([str(ckpt), str(folder)])
    capsys.readouterr()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("keep")
    before = ckpt.read_bytes()
    cases = [
        ([str(ckpt), str(ckpt)], "is also the input"),
        ([str(folder), str(folder / "unet" / "m.safetensors")], "is also the input"),
        ([str(ckpt), str(tmp_path / "full")], "not empty"),
        ([str(ckpt), str(tmp_path / "o.safetensors"), "--v1", "--v2"], "--v1 and --v2"),
        ([str(ckpt), str(tmp_path / "o.safetensors"), "--fp16", "--save_precision_as", "bf16"], "conflicting"),
        ([str(ckpt), str(tmp_path / "o.safetensors"), "--metadata", "__import__('os')"], "--metadata"),
        ([str(tmp_path / "nothing"), str(tmp_path / "o.safetensors")], "not found"),
        ([str(tmp_path / "full"), str(tmp_path / "o.safetensors")], "not a Diffusers model"),
    ]
    for argv, words in cases:
        assert run_main(convert.main, argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and words in err and len(err.splitlines()) == 1, err
    assert ckpt.read_bytes() == before and not (tmp_path / "o.safetensors").exists()
    assert (tmp_path / "full" / "x.txt").read_text() == "keep"


def test_reference_model_supplies_scheduler(tiny_checkpoints, tmp_path, capsys):  # noqa: ANN001
    import json

    ref = save_with_diffusers(random_bundle("sd1"), tmp_path / "ref")  # its scheduler: DDPMScheduler() defaults
    out, plain = tmp_path / "out", tmp_path / "plain"
    convert.main([str(tiny_checkpoints["sd1"]), str(out), "--reference_model", str(ref)])
    convert.main([str(tiny_checkpoints["sd1"]), str(plain), "--reference_model", "runwayml/stable-diffusion-v1-5"])
    config = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    default = json.loads((plain / "scheduler" / "scheduler_config.json").read_text())
    assert config["beta_schedule"] == "linear" and default["beta_schedule"] == "scaled_linear"
    assert "nothing is downloaded" in capsys.readouterr().err

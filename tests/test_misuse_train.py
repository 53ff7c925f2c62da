"""Misuse of the training scripts (issue 22): refused in one line before any model loads (the loader is replaced
by one that fails the test), inputs byte-identical; or one warning for legal but useless values."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train_network  # noqa: E402
from library.cli import run_main  # noqa: E402
from library.train import loop  # noqa: E402
from tests.train_fixtures import error_of, small_env  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_checkpoints) -> dict[str, Path]:  # noqa: ANN001
    return small_env(tmp_path_factory.mktemp("misuse_train"), tiny_checkpoints, 2)


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch) -> None:  # noqa: ANN001
    def refuse(*a, **k) -> None:  # noqa: ANN002, ANN003
        raise AssertionError("a model was loaded before the mistake was found")
    monkeypatch.setattr(loop, "load_training_models", refuse)


def args(env: dict, out: Path, *extra: str, ckpt: Path | None = None) -> list[str]:
    return ["--pretrained_model_name_or_path", str(ckpt or env["ckpt"]), "--train_data_dir", str(env["img"]),
            "--resolution", "64", "--output_dir", str(out), "--output_name", "lora", "--max_train_steps", "2",
            "--network_dim", "4", "--max_data_loader_n_workers", "0", *extra]


def test_network_args_names_and_values(env, tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    for item, expect in [
        ("conv_dmi=4", "--network_args conv_dmi=4: networks.lora has no 'conv_dmi' (did you mean conv_dim?)"),
        ("conv_dim=abc", "--network_args conv_dim=abc: expected a whole number"),
        ("module_dropout=2", "--network_args module_dropout=2: must be in [0, 1) (the share of values dropped"),
        ("rank_dropout=1", "--network_args rank_dropout=1: must be in [0, 1)"),
        ("loraplus_lr_ratio=-4", "--network_args loraplus_lr_ratio=-4: must be in (0, inf)"),
        ("conv_alpha=nan", "--network_args conv_alpha=nan: expected a finite number"),
    ]:
        assert error_of(capsys, args(env, out, "--network_args", item)).startswith(f"error: {expect}")
    line = error_of(capsys, args(env, out, "--network_module", "networks.dylora", "--network_args", "unti=4"))
    assert line == "error: --network_args unti=4: networks.dylora has no 'unti' (did you mean unit?)"
    assert not out.exists()


def test_non_finite_numbers_are_refused(env, tmp_path, capsys) -> None:  # noqa: ANN001
    line = error_of(capsys, args(env, tmp_path / "o", "--learning_rate", "nan"))
    assert line == "error: --learning_rate nan: must be a finite number"
    cfg = tmp_path / "c.toml"
    cfg.write_text("noise_offset = inf\n", encoding="utf-8")
    line = error_of(capsys, args(env, tmp_path / "o", "--config_file", str(cfg)), [cfg])
    assert line == "error: --noise_offset inf: must be a finite number"


def test_resume_problems_are_found_before_loading(env, tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    state = tmp_path / "lora-state"
    line = error_of(capsys, args(env, out, "--resume", str(state)))
    assert line == f"error: --resume {state}: folder not found"
    a_file = tmp_path / "f.json"
    a_file.write_text("{}")
    assert "is a file; give the state folder" in error_of(capsys, args(env, out, "--resume", str(a_file)), [a_file])
    state.mkdir()
    assert "not a state folder (no train_state.json)" in error_of(capsys, args(env, out, "--resume", str(state)))
    (state / "train_state.json").write_text('{"current_epoch": 0, "current_step": 3}')
    line = error_of(capsys, args(env, out, "--resume", str(state)))
    assert line == (f"error: --resume {state}: incomplete state (no network.safetensors, optimizer.pt, rng_0.pt); "
                    "resume from another one")
    for name in ("network.safetensors", "optimizer.pt", "rng_0.pt"):
        (state / name).write_bytes(b"x")
    for bad in ("[1, 2]", '{"current_epoch": "a", "current_step": 1}', "{", '{"current_epoch": 0}'):
        (state / "train_state.json").write_text(bad)
        line = error_of(capsys, args(env, out, "--resume", str(state)), [state / "train_state.json"])
        assert line.startswith(f"error: --resume {state / 'train_state.json'}: unreadable ("), line
    saved = {"current_epoch": 0, "current_step": 3, "network_module": "networks.lora", "network_dim": 8,
             "network_alpha": 1.0, "network_args": [], "optimizer_type": "adamw", "model_name": "x"}
    (state / "train_state.json").write_text(json.dumps(saved))
    line = error_of(capsys, args(env, out, "--resume", str(state)))
    assert line == (f"error: --resume {state}: the state was saved with --network_dim 8, this run has 4; resume "
                    "with the same --network_dim, or start a new run")
    (state / "train_state.json").write_text(json.dumps({**saved, "network_dim": 4, "optimizer_type": "lion"}))
    line = error_of(capsys, args(env, out, "--resume", str(state)))
    assert "saved with --optimizer_type lion, this run has adamw" in line
    (state / "train_state.json").write_text(json.dumps({**saved, "network_dim": 4, "model_hash": "0badc0de"}))
    with pytest.raises(AssertionError, match="a model was loaded"):  # legal: one warning, then the run goes on
        train_network.main(args(env, out, "--resume", str(state)))
    assert f"WARNING: --resume {state}: the state was trained on another base model (x, hash 0badc0de)" in \
        capsys.readouterr().err


def test_weights_and_folders_are_checked_before_loading(env, tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    missing = tmp_path / "nope.safetensors"
    line = error_of(capsys, args(env, out, "--network_weights", str(missing)))
    assert line == f"error: --network_weights {missing}: file not found"
    line = error_of(capsys, args(env, out, "--network_weights", str(tmp_path)))
    assert line == f"error: --network_weights {tmp_path}: is a folder; give the file (.safetensors)"
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00")
    line = error_of(capsys, args(env, out, "--network_weights", str(broken)), [broken])
    assert line == f"error: --network_weights {broken}: truncated safetensors file (no header)"
    a_file = tmp_path / "logs"
    a_file.write_text("x")
    line = error_of(capsys, args(env, out, "--logging_dir", str(a_file)), [a_file])
    assert line == f"error: --logging_dir {a_file}: is a file, not a folder"


def test_family_and_dataset_nonsense(env, tmp_path, capsys) -> None:  # noqa: ANN001
    line = error_of(capsys, args(env, tmp_path / "o", "--text_encoder_lr", "1e-4", "2e-4"))
    assert line == ("error: --text_encoder_lr 0.0001 0.0002: 2 values, but SD1 has one text encoder; give at most 1")
    sdxl = ["--text_encoder_lr", "1e-4", "2e-4", "3e-4", "--resolution", "64"]
    line = error_of(capsys, args(env, tmp_path / "o", *sdxl, ckpt=env["sdxl"]))
    assert line.startswith("error: --text_encoder_lr 0.0001 0.0002 0.0003: 3 values, but SDXL has two text encoders")
    inside = next(p for p in Path(env["img"]).iterdir() if p.is_dir()) / "out"
    line = error_of(capsys, args(env, inside))
    assert line.startswith(f"error: --output_dir {inside}: is inside the training image folder ")
    assert not inside.exists()


def test_bucket_no_upscale_without_buckets_warns(env, tmp_path, capsys) -> None:  # noqa: ANN001
    with pytest.raises(AssertionError, match="a model was loaded"):  # the warning comes before the models load
        train_network.main(args(env, tmp_path / "o", "--bucket_no_upscale"))
    assert "WARNING: bucket_no_upscale has no effect without enable_bucket" in capsys.readouterr().err
    with pytest.raises(AssertionError, match="a model was loaded"):
        train_network.main(args(env, tmp_path / "o", "--bucket_no_upscale", "--enable_bucket",
                                 "--min_bucket_reso", "64", "--max_bucket_reso", "128"))
    assert "bucket_no_upscale" not in capsys.readouterr().err


def test_config_file_mistakes(env, tmp_path, capsys) -> None:  # noqa: ANN001
    twice = tmp_path / "twice.toml"
    twice.write_text("[model]\nnetwork_dim = 8\n[training]\nnetwork_dim = 16\n", encoding="utf-8")
    line = error_of(capsys, args(env, tmp_path / "o", "--config_file", str(twice)), [twice])
    assert line == f"error: --config_file {twice}: network_dim is set in [model] and in [training]; keep one"
    dataset = tmp_path / "dataset.toml"
    dataset.write_text('[general]\nresolution = 64\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = "x"\n',
                       encoding="utf-8")
    line = error_of(capsys, args(env, tmp_path / "o", "--config_file", str(dataset)), [dataset])
    assert line == (f"error: --config_file {dataset}: this is a dataset config ([[datasets]] tables); give it with "
                    "--dataset_config")


def test_weighted_caption_syntax_errors_name_the_file_and_position(env, tmp_path, capsys) -> None:  # noqa: ANN001
    import shutil

    data = tmp_path / "data"
    shutil.copytree(env["img"], data)
    folder = next(p for p in data.iterdir() if p.is_dir())
    caption = sorted(folder.glob("*.caption"))[0]
    argv = [*args(env, tmp_path / "o", "--weighted_captions"), "--train_data_dir", str(data)]
    for text, position, problem in [("a (sks:abc) cat", 8, "weight 'abc' is not a number"),
                                    ("a ((sks) cat", 3, "'(' is never closed"), ("[sks", 1, "'[' is never closed"),
                                    ("a (sks:1e9)", 8, "weight 1e9 is outside [0, 10]"),
                                    ("(sks:-0.5)", 6, "weight -0.5 is outside [0, 10]")]:
        caption.write_text(text, encoding="utf-8")
        line = error_of(capsys, argv, [caption])
        assert line.startswith(f"error: {caption}: position {position}: {problem} (--weighted_captions"), line
    caption.write_text("a (sks:1.2) cat, [blurry], \\(literal\\)", encoding="utf-8")
    with pytest.raises(AssertionError, match="a model was loaded"):  # valid: goes on to load the model
        train_network.main(argv)


def test_generation_mistakes_before_the_model_loads(env, tmp_path, capsys, monkeypatch) -> None:  # noqa: ANN001
    import gen_img_diffusers
    from library.generate import runner

    def refuse(*a, **k) -> None:  # noqa: ANN002, ANN003
        raise AssertionError("a model was loaded before the mistake was found")
    monkeypatch.setattr(runner, "prepare_model", refuse)
    base = ["--ckpt", str(env["ckpt"]), "--outdir", str(tmp_path / "out"), "--prompt", "a cat"]

    def error(*extra: str) -> str:
        assert run_main(gen_img_diffusers.main, [*base, *extra]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err.strip().splitlines()[-1]

    assert error("--network_mul", "0.5") == ("error: --network_mul 0.5: 1 multiplier(s) for 0 --network_weights "
                                             "file(s); give one per file")
    missing = tmp_path / "nope.safetensors"
    assert error("--network_module", "networks.lora", "--network_weights", str(missing)) == \
        f"error: --network_weights {missing}: file not found"
    assert error("--scale", "nan") == "error: --scale nan: must be a finite number"
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    assert error("--network_module", "networks.lora", "--network_weights", str(lora), "--network_args",
                 "conv_dim=abc") == "error: --network_args conv_dim=abc: expected a whole number"
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat --s -1\n", encoding="utf-8")
    assert error("--from_file", str(prompts), "--prompt", "") == \
        f"error: {prompts}: line 1: prompt option --s '-1': must be between 1 and 1000"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

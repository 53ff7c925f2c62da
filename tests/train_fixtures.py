"""Shared inputs of the training-feature tests: the tiny SD1 checkpoint, the sample dataset with its masks, the
command line every run starts from, and the one-line-refusal check of the misuse tests."""

from __future__ import annotations

import hashlib
from pathlib import Path


def make_env(root: Path) -> dict[str, Path]:
    from library.models.factory import write_random_checkpoint
    from library.sample_data import make_sample_dataset, make_sample_masks

    ckpt = write_random_checkpoint(root / "tiny-sd1.safetensors", "sd1")
    img = make_sample_dataset(root / "data", num_images=12, resolution=64, seed=0)
    masks, alpha = make_sample_masks(root / "data", num_images=12, resolution=64, seed=0)
    return {"root": root, "ckpt": ckpt, "img": img, "masks": masks, "alpha": alpha}


def base_args(env: dict, out: Path, steps: int = 4, *extra: str) -> list[str]:
    return ["--pretrained_model_name_or_path", str(env["ckpt"]), "--train_data_dir", str(env["img"]),
            "--resolution", "64", "--output_dir", str(out), "--output_name", "lora", "--max_train_steps", str(steps),
            "--learning_rate", "5e-3", "--network_dim", "4", "--network_alpha", "4", "--seed", "1",
            "--max_data_loader_n_workers", "0", *extra]


def tb_scalars(logdir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one TensorBoard tag."""
    import glob

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(str(logdir / "**" / "events*"), recursive=True)
    assert files, f"no TensorBoard events under {logdir}"
    acc = EventAccumulator(files[0])
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def small_env(root: Path, tiny_checkpoints: dict[str, Path], num_images: int) -> dict[str, Path]:
    """The session's tiny SD1 and SDXL checkpoints and a square sample dataset of `num_images` at 64 px."""
    from library.sample_data import make_sample_dataset

    return {"root": root, "ckpt": tiny_checkpoints["sd1"], "sdxl": tiny_checkpoints["sdxl"],
            "img": make_sample_dataset(root / "data", num_images=num_images, resolution=64, seed=0,
                                       aspect_ratios=False)}


def digest(path: Path) -> str:
    """A file's sha256 ("folder" for a folder): inputs must come out of a refused run byte-identical."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).is_file() else "folder"


def error_of(capsys, argv: list[str], inputs: list[Path] = ()) -> str:  # noqa: ANN001
    """Run train_network.py's main: exit 2 with one `error:` line, the last of stderr, no traceback, `inputs`
    unchanged. Returns the line."""
    import train_network
    from library.cli import run_main

    before = {p: digest(p) for p in inputs}
    assert run_main(train_network.main, argv) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err and err.strip().splitlines()[-1] == errors[0], err
    assert {p: digest(p) for p in inputs} == before
    return errors[0]

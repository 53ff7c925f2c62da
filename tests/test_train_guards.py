"""train_network.py refuses what would waste or spoil a run, before the first step where it can: an unusable
--output_dir, --network_weights with NaN/Inf or that do not fit the model; it stops at the first non-finite
loss; a third-party network module's files get normal permissions; a run killed with SIGKILL after a
--save_state save resumes to the same LoRA as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import train_network  # noqa: E402
from library.lora_io import modules_to_state_dict, save_lora  # noqa: E402
from library.random_lora import random_lora  # noqa: E402
from tests.train_fixtures import error_of, small_env  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_checkpoints) -> dict[str, Path]:  # noqa: ANN001
    return small_env(tmp_path_factory.mktemp("guards"), tiny_checkpoints, 4)


def args(env: dict, out: Path, steps: int = 2, *extra: str) -> list[str]:
    """Short runs encode their few batches as they go: caching the latents first costs more than it saves."""
    return ["--pretrained_model_name_or_path", str(env["ckpt"]), "--train_data_dir", str(env["img"]),
            "--resolution", "64", "--output_dir", str(out), "--output_name", "lora", "--max_train_steps", str(steps),
            "--learning_rate", "5e-3", "--network_dim", "4", "--network_alpha", "4", "--seed", "1",
            "--max_data_loader_n_workers", "0", *extra]


def test_unusable_output_dir_fails_before_loading_anything(env, tmp_path, capsys) -> None:  # noqa: ANN001
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    started = time.perf_counter()
    line = error_of(capsys, args(env, a_file), [a_file, env["ckpt"]])
    assert line == f"error: --output_dir {a_file}: is a file, not a folder"
    line = error_of(capsys, args(env, a_file / "out"), [a_file, env["ckpt"]])
    assert line == f"error: --output_dir {a_file / 'out'}: {a_file} is a file, so no folder can be made below it"
    assert time.perf_counter() - started < 20  # refused at start, not at the first save


def test_network_weights_with_nan_or_for_another_model_are_refused(env, tmp_path, capsys, monkeypatch) -> None:  # noqa: ANN001
    sd = modules_to_state_dict(random_lora(env["ckpt"], rank=4, seed=5))
    key = sorted(k for k in sd if k.endswith("lora_down.weight"))[3]
    sd[key][1, 1] = float("nan")
    nan = tmp_path / "nan.safetensors"
    save_file(sd, nan)  # save_lora refuses NaN
    out = tmp_path / "out"
    from library.train import loop

    real_load = loop.load_training_models

    def refuse(*a, **k) -> None:  # noqa: ANN002, ANN003
        raise AssertionError("the model was loaded before the damaged file was found")
    monkeypatch.setattr(loop, "load_training_models", refuse)
    line = error_of(capsys, args(env, out, 2, "--network_weights", str(nan)), [nan])
    assert line.startswith(f"error: {nan}: tensor {key} holds NaN or Inf values")
    monkeypatch.setattr(loop, "load_training_models", real_load)
    # an SDXL LoRA on the SD1 model: nothing of the file loads
    sdxl = tmp_path / "sdxl.safetensors"
    save_lora(sdxl, modules_to_state_dict(random_lora(env["sdxl"], rank=4, seed=6)))
    n = len({k.split(".")[0] for k in load_file(sdxl)})
    for extra in ([], ["--dim_from_weights"]):
        line = error_of(capsys, args(env, out, 2, "--network_weights", str(sdxl), *extra), [sdxl])
        assert line.startswith(f"error: --network_weights {sdxl}: {n} of {n} modules in the file match no module "
                               "of this network (e.g. lora_"), line
        assert "0 loaded" in line
    # a rank that does not fit --network_dim
    ok = tmp_path / "rank2.safetensors"
    save_lora(ok, modules_to_state_dict(random_lora(env["ckpt"], rank=2, seed=7)))
    line = error_of(capsys, args(env, out, 2, "--network_weights", str(ok)), [ok])
    assert line.startswith(f"error: --network_weights {ok}: does not fit this network (size mismatch")
    assert not list(out.glob("*.safetensors"))


def test_non_finite_loss_stops_the_run_and_keeps_the_last_save(env, tmp_path, capsys) -> None:  # noqa: ANN001
    # a learning rate that sends the LoRA's weights to ~1e30 in one step: attention logits overflow next step
    out = tmp_path / "out"
    argv = args(env, out, 4, "--save_every_n_steps", "1", "--learning_rate", "1e30")
    line = error_of(capsys, argv, [env["ckpt"]])
    last = out / "lora-step00000001.safetensors"
    assert line.startswith(f"error: step 2: the loss is nan; training stopped (the last good save, {last}, is "
                           "kept)"), line
    assert [p.name for p in out.iterdir()] == [last.name]
    assert all(torch.isfinite(t).all() for t in load_file(last).values())


THIRD_PARTY = '''
import os, tempfile
from safetensors.torch import save_file
from networks import lora


def create_network(*args, **kwargs):
    net = lora.create_network(*args, **kwargs)

    def save_weights(file, dtype=None, metadata=None):  # writes like many third-party modules: mkstemp + rename
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(file))
        os.close(fd)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp)
        os.replace(tmp, file)

    net.save_weights = save_weights
    return net
'''


def test_third_party_module_files_get_normal_permissions(env, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    mod = tmp_path / "mods"
    mod.mkdir()
    (mod / "thirdparty_net.py").write_text(THIRD_PARTY, encoding="utf-8")
    monkeypatch.syspath_prepend(str(mod))
    old = os.umask(0o022)
    try:
        path = train_network.main(args(env, tmp_path / "out", 1, "--network_module", "thirdparty_net"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert load_file(path)  # a complete file
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["lora.safetensors"]  # no temporary left


def test_sigkill_after_a_saved_state_resumes_to_the_same_lora(env, tmp_path) -> None:  # noqa: ANN001
    """The killed run saves a state at step 2 and its LoRA at step 4, then dies by SIGKILL; resumed from the step-2
    state, a new run reaches step 4 with exactly the LoRA the killed run had there before it was killed."""
    extra = ["--save_state", "--save_every_n_steps", "2", "--optimizer_type", "AdamW", "--flip_aug"]
    killed = tmp_path / "killed"
    at_4 = killed / "lora-step00000004.safetensors"
    cmd = [sys.executable, str(ROOT / "train_network.py"), *args(env, killed, 100000, *extra)]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not at_4.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)  # let it work on past the save: the kill lands mid-run
    finally:
        proc.send_signal(signal.SIGKILL)  # no handler runs
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert at_4.exists(), "the killed run never reached step 4"
    state = killed / "lora-step00000002-state"
    assert json.loads((state / "train_state.json").read_text())["current_step"] == 2
    resumed = train_network.main(args(env, tmp_path / "resumed", 4, *extra, "--resume", str(state)))
    a, b = load_file(resumed), load_file(at_4)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_up" in k)

"""--log_with wandb|all: offline by default, a run folder holding the same loss history TensorBoard gets, the sample
images, the run's options without secrets; one-line refusals. --torch_compile: compiles with a working backend,
one warning line and an uncompiled run with one that cannot work (a tiny module: tracing the U-Net takes minutes;
a training run without a compiler: the wandb run)."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import train_network  # noqa: E402
from library.cli import run_main  # noqa: E402
from tests.train_fixtures import base_args, tb_scalars  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_checkpoints) -> dict:
    from library.sample_data import make_sample_dataset

    root = tmp_path_factory.mktemp("trackers")
    return {"ckpt": tiny_checkpoints["sd1"], "img": make_sample_dataset(root / "data", num_images=4, resolution=64,
                                                                         seed=0)}


def wandb_records(path: Path) -> list:
    """The records of an offline `.wandb` file (LevelDB-log framing: 32 KiB blocks, 7-byte record headers)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding at the end of a block
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, or last fragment
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            records.append(rec)
            pending = b""
    return records


def test_wandb_offline_run_holds_loss_history_and_samples(env, tmp_path, monkeypatch, capsys):
    """The same run also asks for --torch_compile on a machine without a C++ compiler (inductor cannot work on
    CPU): one warning line, and it trains uncompiled."""
    import shutil

    which = shutil.which
    monkeypatch.setattr("shutil.which", lambda name, *a, **k: None if name in ("c++", "g++", "clang++")
                        else which(name, *a, **k))
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sks circle --w 64 --h 64 --s 2 --d 3\n", encoding="utf-8")
    logs = tmp_path / "logs"
    train_network.main(base_args(env, tmp_path / "out", 3, "--cache_latents", "--network_train_unet_only",
                                 "--log_with", "all", "--logging_dir", str(logs), "--wandb_run_name", "r1",
                                 "--log_tracker_name", "proj", "--log_config", "--sample_prompts", str(prompts),
                                 "--sample_every_n_steps", "3", "--torch_compile"))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "--torch_compile" in ln]
    assert lines == ["WARNING: --torch_compile: inductor on CPU needs a C++ compiler (c++/g++/clang++), none is on PATH; "
                     "training continues uncompiled"]
    runs = list((logs / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(logs.rglob("*"))[:20]
    history: dict[str, dict[int, object]] = {}
    config = {}
    for rec in wandb_records(next(runs[0].glob("*.wandb"))):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            step = rec.history.step.num
            for item in rec.history.item:  # an image's fields come as nested keys [name, field]
                key, *field = [item.key] if item.key else list(item.nested_key)
                value = json.loads(item.value_json)
                if field:
                    history.setdefault(key, {}).setdefault(step, {})[field[0]] = value
                else:
                    history.setdefault(key, {})[step] = value
        elif kind == "run":
            assert rec.run.display_name == "r1" and rec.run.project == "proj"
            config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
    tb = dict(tb_scalars(logs, "loss/current"))
    assert sorted(history["loss/current"]) == [1, 2, 3]
    assert history["loss/current"] == pytest.approx(tb, rel=1e-6)
    assert "loss/average" in history and any(k.startswith("lr/") for k in history)
    assert history["sample_0"][3]["_type"] == "image-file"
    assert dict(tb_scalars(logs, "loss/average"))  # TensorBoard got the same run
    assert config["learning_rate"] == 5e-3 and config["network_dim"] == 4 and "wandb_api_key" not in config


def test_refusals(env, tmp_path, capsys, monkeypatch):
    rc = run_main(train_network.main, base_args(env, tmp_path / "o", 1, "--log_with", "all"))
    assert rc == 2 and "--log_with all: TensorBoard needs --logging_dir" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    rc = run_main(train_network.main, base_args(env, tmp_path / "o", 1, "--log_with", "wandb"))
    assert rc == 2 and "the wandb package is not installed" in capsys.readouterr().err


def test_compile_unet_compiles_and_falls_back_in_one_line(caplog):
    import torch
    from torch._dynamo import register_backend

    from library.train.compile import compile_unet

    @register_backend
    def failing_backend(gm, example_inputs):  # noqa: ANN001, ANN202 - a backend that cannot compile this
        raise RuntimeError("no code generator")

    class Tiny(torch.nn.Module):  # user code, as Diffusers' U-Net is (dynamo skips torch.nn's own containers)
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.nn.functional.gelu(self.a(x)))

    x = torch.randn(2, 4)
    for backend in ("eager", "failing_backend"):
        torch.manual_seed(0)
        model = Tiny()
        expected = model(x)
        call = compile_unet(model, backend, torch.device("cpu"))
        assert torch.equal(call(x), expected) and torch.equal(call(x), expected)
        assert (model._compiled_call_impl is not None) == (backend == "eager")
    failed = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert failed == ["--torch_compile: compiling the U-Net with failing_backend failed (RuntimeError: no code "
                      "generator); training continues uncompiled"]

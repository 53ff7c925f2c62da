"""--fp8_base / --fp8_base_unet on the tiny SD1 model: frozen weights stored in float8_e4m3fn, the LoRA not; the
loss falls; the first loss agrees with the float32 run's within what fp8 rounding of the weights moves it;
one-line refusals; loading saturates at fp8's range instead of making NaN."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import train_network  # noqa: E402
from library.cli import run_main  # noqa: E402
from tests.train_fixtures import base_args, tb_scalars  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
FP8 = torch.float8_e4m3fn


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_checkpoints) -> dict:
    from library.sample_data import make_sample_dataset

    root = tmp_path_factory.mktemp("fp8")
    return {"ckpt": tiny_checkpoints["sd1"], "img": make_sample_dataset(root / "data", num_images=6, resolution=64,
                                                                         seed=0)}


def _trainer(argv: list[str]):  # noqa: ANN202
    from library.options.parse import parse_training_args
    from library.train.loop import Trainer

    trainer = Trainer(parse_training_args(argv, "train_network"))
    trainer.setup()
    return trainer


FP8_RUN = ("--train_batch_size", "1", "--learning_rate", "2e-2", "--network_args", "conv_dim=4", "conv_alpha=4",
           "--network_train_unet_only", "--cache_latents")


def _first_loss(env: dict, tmp_path: Path, name: str, *extra: str) -> float:
    """The step-1 loss of a one-step run with the settings of the fp8 run below (the same noise and batch)."""
    trainer = _trainer(base_args(env, tmp_path / name, 1, "--logging_dir", str(tmp_path / f"logs-{name}"),
                                 *FP8_RUN, *extra))
    trainer.run()
    return tb_scalars(tmp_path / f"logs-{name}", "loss/current")[0][1], trainer


@pytest.fixture(scope="module")
def fp8_run(env, tmp_path_factory) -> dict:
    """12 steps with --fp8_base: the dtypes after setup, the losses, the saved LoRA."""
    from library.train import loop

    tmp = tmp_path_factory.mktemp("fp8run")
    staged = {}
    load_unet = loop.load_training_unet

    def spy(cfg, precision, bundle) -> None:  # noqa: ANN001 - what memory holds when the U-Net is read
        staged.update(unet=bundle.unet, vae=bundle.vae)
        load_unet(cfg, precision, bundle)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "load_training_unet", spy)
        trainer = _trainer(base_args(env, tmp / "out", 12, "--mixed_precision", "bf16", "--fp8_base",
                                     "--logging_dir", str(tmp / "logs"), *FP8_RUN))
    unet, te = trainer.bundle.unet, trainer.bundle.text_encoders[0]
    wrapped = [m.org_forward for m in trainer.network.modules() if getattr(m, "org_forward", None) is not None]
    dtypes = {"unet": {n: (p.dtype, p.ndim) for n, p in unet.named_parameters()},
              "te": {n: (p.dtype, p.ndim) for n, p in te.named_parameters()},
              "te_embedding": te.get_input_embeddings().weight.dtype,
              "lora": [p.dtype for p in trainer.network.parameters()]}
    path = trainer.run()
    return {"dtypes": dtypes, "staged": staged, "wrapped": wrapped, "losses": [v for _, v in tb_scalars(tmp / "logs", "loss/current")], "path": path}


def test_fp8_weights_stored_lora_not_and_loss_falls(fp8_run):
    dtypes = fp8_run["dtypes"]
    for part in ("unet", "te"):
        matrices = [d for n, (d, ndim) in dtypes[part].items() if ndim >= 2 and "embedding" not in n]
        assert matrices and all(d == FP8 for d in matrices)
        assert all(d == torch.bfloat16 for d, ndim in dtypes[part].values() if ndim < 2)  # norms, biases
    assert dtypes["te_embedding"] == torch.bfloat16
    # the U-Net was read after the latents were cached and the VAE freed: the two never shared memory
    assert fp8_run["staged"] == {"unet": None, "vae": None}
    assert dtypes["lora"] and all(d == torch.float32 for d in dtypes["lora"])
    # every layer the LoRA wraps (all hold fp8 weights) computes through the widening forward, not autocast's cast
    from library.models import fp8

    wrapped = fp8_run["wrapped"]
    assert wrapped and all(getattr(f, "func", None) in (fp8._linear_forward, fp8._conv_forward) for f in wrapped)
    losses = fp8_run["losses"]
    assert statistics.mean(losses[-4:]) < 0.8 * statistics.mean(losses[:4]), losses  # measured 1.10 -> 0.64
    from safetensors import safe_open

    with safe_open(str(fp8_run["path"]), "pt") as f:
        meta = f.metadata()
        assert meta["ss_fp8_base"] == "True" and meta["ss_fp8_base_unet"] == "False"
        assert all(f.get_tensor(k).dtype == torch.float32 for k in f.keys())


def test_first_loss_within_fp8_rounding_of_float32(env, fp8_run, tmp_path):
    fp8 = fp8_run["losses"][0]
    fp32, _ = _first_loss(env, tmp_path, "fp32")
    unet8, trainer = _first_loss(env, tmp_path, "unet8", "--mixed_precision", "bf16", "--fp8_base_unet")
    assert any(p.dtype == FP8 for p in trainer.bundle.unet.parameters())  # --fp8_base_unet: the U-Net only
    assert {p.dtype for p in trainer.bundle.text_encoders[0].parameters()} == {torch.bfloat16}
    # e4m3 keeps 3 mantissa bits (each weight moves by up to 1/16) where bf16 keeps 7; the errors mostly average
    # out: measured fp32 1.2012, bf16 1.2022, fp8 1.1971, fp8 U-Net only 1.1954 (0.3-0.5%)
    assert abs(fp8 - fp32) <= 0.02 * fp32, (fp32, fp8)
    assert abs(unet8 - fp32) <= 0.02 * fp32, (fp32, unet8)
    assert fp8 != fp32 and unet8 != fp32  # the weights really were narrowed


def test_refusals(env, tmp_path, capsys):
    rc = run_main(train_network.main, base_args(env, tmp_path / "o", 1, "--fp8_base"))
    assert rc == 2
    assert "--fp8_base: fp8 weights are computed in the mixed-precision dtype" in capsys.readouterr().err


def test_loading_saturates_at_fp8_range(env, tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    from library.models import load_models

    sd = load_file(env["ckpt"])
    w = sd["model.diffusion_model.input_blocks.0.0.weight"]  # the U-Net's conv_in
    w[0, 0, 0, 0], w[0, 0, 0, 1] = 1000.0, -600.0
    save_file(sd, tmp_path / "big.safetensors")
    loaded = load_models(tmp_path / "big.safetensors", dtype=torch.bfloat16, unet_dtype=FP8)
    got = loaded.unet.conv_in.weight
    assert got.dtype == FP8
    assert got[0, 0, 0, 0].float() == 448 and got[0, 0, 0, 1].float() == -448
    assert torch.isfinite(got.float()).all()
    assert "clamped to +-448" in caplog.text


def test_widen_is_exact_for_every_code(monkeypatch):
    from library.models import fp8

    codes = torch.arange(256, dtype=torch.uint8)
    codes = codes[(codes & 0x7F) != 0x7F].view(FP8)  # the 254 finite codes: +-0, subnormals, normals up to 448
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        assert torch.equal(fp8.widen(codes, dtype), codes.to(dtype)), dtype
    monkeypatch.setattr(fp8, "CHUNK", 1000)  # several chunks and a short last one
    w = (torch.randn(50, 53, generator=torch.Generator().manual_seed(0)) * 0.05).to(FP8)
    assert torch.equal(fp8.widen(w, torch.bfloat16), w.to(torch.bfloat16))


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_fp8_layers_match_autocast_and_save_only_fp8(kind):
    """The widening forward gives autocast's output and input gradient exactly, and keeps no wide weight for
    backward (autocast's cast is saved by the matmul)."""
    from library.models import fp8

    torch.manual_seed(0)
    make = (lambda: torch.nn.Linear(40, 24)) if kind == "linear" else (lambda: torch.nn.Conv2d(6, 8, 3, 2, 1))
    ours, ref = make(), make()
    ours.weight.data = ours.weight.data.to(FP8)
    ref.load_state_dict(ours.state_dict())  # the same fp8 values, widened to float32
    for m in (ours, ref):
        m.weight.requires_grad_(False)
    fp8.fast_forward(ours)
    x = torch.randn(2, 5, 40) if kind == "linear" else torch.randn(2, 6, 13, 10)  # odd size: stride 2 rounds
    saved = []
    results = []
    for m in (ours, ref):
        xi = x.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(lambda t, m=m: saved.append((m, t.dtype, t.numel())) or t,
                                                      lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = m(xi)
        y.float().square().sum().backward()
        results.append((y, xi.grad, m.bias.grad))
    (y, gx, gb), (y_ref, gx_ref, gb_ref) = results
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_ref)
    assert torch.equal(gx, gx_ref) and torch.allclose(gb, gb_ref, rtol=1e-2, atol=1e-2)
    size = ours.weight.numel()  # (a linear may save its weight transposed)
    assert any(m is ref and d == torch.bfloat16 and n == size for m, d, n in saved)  # autocast keeps a wide copy
    assert not any(m is ours and d != FP8 and n == size for m, d, n in saved)  # ours only the fp8 weight
    assert any(m is ours and d == FP8 for m, d, n in saved)

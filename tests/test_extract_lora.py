"""extract_lora_from_models.py on tiny checkpoints with planted low-rank changes, and the randomized SVD's accuracy."""

from __future__ import annotations

import json

import pytest
import torch

from library.cli import run_main
from library.extract import decompose, select_targets
from library.files import load_state_dict, save_state_dict
from library.lora_io import split_modules
from library.lowrank import lowrank_of_matrix
from networks import extract_lora_from_models

PLANTED_RANK = 8


def plant(ckpt, out, family, conv_dim, seed, te=True, noise=1e-5):  # noqa: ANN001, ANN201
    """Write base + a random rank-8 change on every extractable module + small noise; return the planted deltas."""
    base, _ = load_state_dict(ckpt)
    shapes = {k: tuple(v.shape) for k, v in base.items()}
    g = torch.Generator().manual_seed(seed)
    tuned = {k: v.clone() for k, v in base.items()}
    for v in tuned.values():
        if v.is_floating_point():
            v += noise * torch.randn(v.shape, generator=g)
    planted = {}
    for name, t in select_targets(shapes, family, conv_dim).items():
        if not te and name.startswith("lora_te"):
            continue
        part = tuned[t.key][t.rows[0]:t.rows[1]] if t.rows else tuned[t.key]
        u = torch.randn(part.shape[0], PLANTED_RANK, generator=g) * 0.05
        v = torch.randn(PLANTED_RANK, part[0].numel(), generator=g) * 0.05
        planted[name] = (u @ v).reshape(part.shape)
        part += planted[name]
    save_state_dict(tuned, out)
    return planted


@pytest.fixture(scope="module")
def sd1_pair(tiny_checkpoints, tmp_path_factory):  # noqa: ANN001, ANN201
    d = tmp_path_factory.mktemp("extract")
    tuned = d / "tuned.safetensors"
    planted = plant(tiny_checkpoints["sd1"], tuned, "sd1", conv_dim=8, seed=21)
    return {"dir": d, "org": tiny_checkpoints["sd1"], "tuned": tuned, "planted": planted}


def extract(org, tuned, out, *extra):  # noqa: ANN001, ANN201
    extract_lora_from_models.main(["--model_org", str(org), "--model_tuned", str(tuned), "--save_to", str(out),
                                   *extra])
    sd, meta = load_state_dict(out)
    return split_modules(sd), meta


def assert_recovers(modules, planted):  # noqa: ANN001
    assert set(modules) == set(planted)
    for name, f in modules.items():
        want = planted[name]
        assert f.delta().shape == want.shape, name
        assert float((f.delta() - want).norm() / want.norm()) < 1e-2, name


def test_extract_recovers_planted_rank8_changes(sd1_pair):  # noqa: ANN001
    """The default (no clamp) is the faithful truncated SVD: a planted rank-8 change comes back to 1e-2 at dim 8."""
    modules, meta = extract(sd1_pair["org"], sd1_pair["tuned"], sd1_pair["dir"] / "x.safetensors",
                            "--dim", "8", "--conv_dim", "8")
    assert_recovers(modules, sd1_pair["planted"])
    kinds = {(f.down.ndim, f.kernel_size) for f in modules.values()}
    assert kinds == {(2, (1, 1)), (4, (1, 1)), (4, (3, 3))}
    assert meta["ss_network_dim"] == "8" and meta["ss_network_alpha"] == "8.0"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "8", "conv_alpha": "8.0"}
    assert meta["ss_base_model_version"] == "sd_v1" and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_extract_sd2_and_sdxl_including_packed_qkv(family, tiny_checkpoints, tmp_path):  # noqa: ANN001
    tuned = tmp_path / "tuned.safetensors"
    planted = plant(tiny_checkpoints[family], tuned, family, conv_dim=None, seed=22)
    modules, meta = extract(tiny_checkpoints[family], tuned, tmp_path / "x.safetensors", "--dim", "8",
                            "--save_precision", "fp16")
    assert any(n.endswith("self_attn_k_proj") and ("te2" in n or family == "sd2") for n in modules)
    assert_recovers(modules, planted)
    assert meta["ss_v2"] == str(family == "sd2")


def test_text_encoder_skipped_when_unchanged(sd1_pair, tmp_path):  # noqa: ANN001
    tuned = tmp_path / "unet_only.safetensors"
    planted = plant(sd1_pair["org"], tuned, "sd1", conv_dim=None, seed=23, te=False, noise=1e-3)
    modules, _ = extract(sd1_pair["org"], tuned, tmp_path / "x.safetensors", "--dim", "8", "--min_diff", "0.01")
    assert not any(n.startswith("lora_te") for n in modules)
    assert set(modules) == set(planted)
    modules, _ = extract(sd1_pair["org"], tuned, tmp_path / "y.safetensors", "--dim", "8", "--min_diff", "1e-4")
    assert any(n.startswith("lora_te") for n in modules)  # the 1e-3 noise counts as a change at this threshold


@pytest.mark.parametrize("rank", [8, 32, 96])
def test_randomized_svd_within_one_percent_of_exact(rank):  # noqa: ANN001
    g = torch.Generator().manual_seed(rank)
    n, m = 320, 1280
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    v, _ = torch.linalg.qr(torch.randn(m, n, generator=g))
    for decay in (0.1, 0.5):  # slowly decaying spectra are the hard case for a randomized range finder
        a = (u * torch.arange(1, n + 1).float() ** -decay) @ v.T
        s = torch.linalg.svdvals(a)
        best = float(s[rank:].norm())
        uu, ss, vh = lowrank_of_matrix(a, rank, torch.Generator().manual_seed(0))
        err = float((a - (uu * ss) @ vh).norm())
        assert best * (1 - 1e-5) <= err <= 1.01 * best


def test_clamp_quantile_reproduces_sd_scripts(sd1_pair):  # noqa: ANN001
    """--clamp_quantile 0.99: up = U·S and down = Vh clamped to ±torch.quantile(joined values, 0.99), as sd-scripts."""
    clamped, _ = extract(sd1_pair["org"], sd1_pair["tuned"], sd1_pair["dir"] / "c.safetensors", "--dim", "8",
                         "--clamp_quantile", "0.99")
    exact, _ = extract(sd1_pair["org"], sd1_pair["tuned"], sd1_pair["dir"] / "e.safetensors", "--dim", "8")
    name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2"
    joined = torch.cat([exact[name].up.flatten(), exact[name].down.flatten()])
    hi = float(torch.quantile(joined, 0.99))
    torch.testing.assert_close(clamped[name].up, exact[name].up.clamp(-hi, hi), rtol=0, atol=1e-6)
    torch.testing.assert_close(clamped[name].down, exact[name].down.clamp(-hi, hi), rtol=0, atol=1e-6)
    assert float(joined.abs().max()) > hi * 1.2  # the clamp really cut something
    errors = [float((clamped[n].delta() - sd1_pair["planted"][n]).norm() / sd1_pair["planted"][n].norm())
              for n in clamped]
    assert max(errors) > 1e-2  # what the default avoids: the clamp costs accuracy on an exactly low-rank change


def test_clamp_quantile_out_of_range_is_one_line(sd1_pair, tmp_path, capsys):  # noqa: ANN001
    argv = ["--model_org", str(sd1_pair["org"]), "--model_tuned", str(sd1_pair["tuned"]),
            "--save_to", str(tmp_path / "x.safetensors"), "--clamp_quantile", "1.5"]
    assert run_main(extract_lora_from_models.main, argv) == 2
    assert "--clamp_quantile" in capsys.readouterr().err and not (tmp_path / "x.safetensors").exists()


def test_ranks_above_512_work():
    g = torch.Generator().manual_seed(5)
    delta = torch.randn(1100, 600, generator=g) @ torch.randn(600, 1100, generator=g)
    exact = decompose(delta, 600, torch.device("cpu"), None, g)
    clamped = decompose(delta, 600, torch.device("cpu"), 0.99, g)  # sorted, so no torch.quantile size limit
    for f in (exact, clamped):
        assert f.rank == 600 and f.up.shape == (1100, 600) and f.down.shape == (600, 1100)
    assert float((exact.delta() - delta).norm() / delta.norm()) < 1e-4
    assert 0 < float(clamped.up.abs().max()) < float(exact.up.abs().max())


def test_mismatched_models_fail(tiny_checkpoints, tmp_path, capsys):  # noqa: ANN001
    out = tmp_path / "x.safetensors"
    argv = ["--model_org", str(tiny_checkpoints["sd1"]), "--model_tuned", str(tiny_checkpoints["sdxl"]),
            "--save_to", str(out)]
    assert run_main(extract_lora_from_models.main, argv) == 2
    assert "SD1.x" in capsys.readouterr().err and not out.exists()
    argv = ["--model_org", str(tiny_checkpoints["sd1"]), "--model_tuned", str(tmp_path / "missing.safetensors"),
            "--save_to", str(out)]
    assert run_main(extract_lora_from_models.main, argv) == 2
    assert "not found" in capsys.readouterr().err and not out.exists()

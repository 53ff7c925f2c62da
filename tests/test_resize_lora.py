"""networks/resize_lora.py, both forms, on tiny models: exactness, Eckart–Young optimality, sd-scripts' rank
choices, recipes, size targets, the norms cache, merges, reports and error messages."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from library.cli import run_main
from library.files import LazySafetensors, read_metadata
from library.keys import checkpoint_targets, detect_family
from library.lora_io import compose, load_lora, precalculate_hashes, save_lora, split_modules
from library.resize.kohya import choose_rank
from library.resize.report import DROPPED, KEPT
from networks.resize_lora import main

# ---- helpers -------------------------------------------------------------------------------------------

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run best on one thread


def _targets(ckpt: Path, conv: bool) -> tuple[dict, dict]:
    lz = LazySafetensors(ckpt)
    shapes = {k: lz.shape(k) for k in lz}
    targets = checkpoint_targets(shapes, detect_family(shapes))
    keep = {n: t for n, t in targets.items() if t.group == "lierla" or (conv and t.group == "c3lier")}
    return keep, shapes


def make_lora(ckpt: Path, path: Path, rank: int = 8, conv: bool = False, seed: int = 0, alpha: float = 4.0,
              spectral: bool = False, extra: dict | None = None) -> Path:
    """A LoRA for every (LierLa, +C3Lier) weight of `ckpt`; `spectral` gives each layer a known decaying
    spectrum (random orthonormal factors), otherwise plain Gaussian factors."""
    targets, shapes = _targets(ckpt, conv)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, t in sorted(targets.items()):
        shape = shapes[t.key]
        out = t.rows[1] - t.rows[0] if t.rows else shape[0]
        inner = shape[1:]
        n_in = math.prod(inner)
        if spectral:
            r = min(rank, out, n_in)
            rate = float(torch.rand(1, generator=g)) * 1.2 + 0.1
            s = torch.exp(-rate * torch.arange(r, dtype=torch.float64)) * 0.3
            qu, _ = torch.linalg.qr(torch.randn(out, r, generator=g, dtype=torch.float64))
            qv, _ = torch.linalg.qr(torch.randn(n_in, r, generator=g, dtype=torch.float64))
            up, down = (qu * s).float(), qv.T.float().reshape(r, *inner)
        else:
            r = rank
            down = torch.randn(r, *inner, generator=g) / math.sqrt(n_in)
            up = torch.randn(out, r, generator=g) * 0.05
        if len(shape) == 4:
            up = up.reshape(out, r, 1, 1)
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = down, up
        sd[f"{name}.alpha"] = torch.tensor(alpha)
    sd.update(extra or {})
    meta = {"ss_network_dim": str(rank), "ss_network_alpha": str(alpha), "ss_training_comment": "test"}
    save_lora(path, sd, meta, torch.float32)
    return path


def deltas(path: Path) -> dict[str, torch.Tensor]:
    sd, _ = load_lora(path)
    return {n: m.delta(torch.float64).reshape(m.up.shape[0], -1) for n, m in split_modules(sd).items()}


def ranks(path: Path) -> dict[str, int]:
    sd, _ = load_lora(path)
    return {n: m.rank for n, m in split_modules(sd).items()}


def base_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """Every LoRA-able base weight by LoRA name, float64 [out, in·k·k] (q/k/v row slices cut out)."""
    targets, _ = _targets(ckpt, True)
    out = {}
    with safe_open(str(ckpt), "pt") as f:
        for name, t in targets.items():
            w = f.get_tensor(t.key).double()
            if t.rows:
                w = w[t.rows[0]:t.rows[1]]
            out[name] = w.reshape(w.shape[0], -1)
    return out


def run(argv: list) -> int:
    return run_main(main, [str(a) for a in argv])


@pytest.fixture(scope="module")
def loras(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("loras")
    sd1 = tiny_checkpoints["sd1"]
    return {
        "plain": make_lora(sd1, d / "plain.safetensors", rank=8, conv=True),
        "spectral": make_lora(sd1, d / "spectral.safetensors", rank=16, conv=True, spectral=True, seed=1),
        "a": make_lora(sd1, d / "alpha-one.safetensors", rank=4, seed=2, alpha=2.0),
        "b": make_lora(sd1, d / "beta_two.safetensors", rank=6, seed=3, alpha=6.0),
    }


# ---- sd-scripts form -----------------------------------------------------------------------------------

def test_kohya_rank_at_or_above_original_keeps_the_delta(loras, tmp_path):
    out = tmp_path / "up.safetensors"
    assert run(["--model", loras["plain"], "--save_to", out, "--new_rank", 12, "--new_conv_rank", 100000]) == 0
    before, after = deltas(loras["plain"]), deltas(out)
    assert before.keys() == after.keys()
    for n, d in before.items():
        assert float((after[n] - d).norm() / d.norm()) < 1e-5, n
    sd, _ = load_lora(out)
    for n, m in split_modules(sd).items():
        cap = 100000 if m.is_conv else 12
        assert m.rank == min(cap, m.up.shape[0], m.down2d().shape[1]), n  # kohya's rank, clamped to the layer
        assert m.scale == pytest.approx(4.0 / 8)  # alpha/rank kept


def test_kohya_fixed_rank_is_eckart_young_optimal(loras, tmp_path):
    out = tmp_path / "r3.safetensors"
    assert run(["--model", loras["plain"], "--save_to", out, "--new_rank", 3, "--new_conv_rank", 2]) == 0
    before, after = deltas(loras["plain"]), deltas(out)
    sd, meta = load_lora(out)
    mods = split_modules(sd)
    for n, d in before.items():
        s = torch.linalg.svdvals(d)
        k = 2 if mods[n].is_conv else 3
        assert mods[n].rank == k
        optimal = float(s[k:].pow(2).sum().sqrt())
        assert float((after[n] - d).norm()) == pytest.approx(optimal, rel=1e-4, abs=1e-7 * float(s[0])), n
        assert float(sd[f"{n}.alpha"]) == pytest.approx(0.5 * k)
    assert meta["ss_network_dim"] == "3" and meta["ss_network_alpha"] == "1.5"
    assert meta["ss_training_comment"] == "dimension is resized from 8 to 3 (conv: 2); test"
    assert (meta["sshs_model_hash"], meta["sshs_legacy_hash"]) == precalculate_hashes(sd, meta)
    assert all(v.dtype == torch.float32 for v in sd.values())


def _reference_rank(s: np.ndarray, method: str, p: float, cap: int) -> int:
    """Spec lora-tools.md §6 on the full SVD of up@down: count, clamp to [1, n-1], keep one more, cap."""
    if method == "sv_ratio":
        c = int((s > s[0] / p).sum())
    elif method == "sv_fro":
        c = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), p**2)) + 1
    else:
        c = int(np.searchsorted(np.cumsum(s) / np.sum(s), p)) + 1
    k = max(1, min(c, len(s) - 1)) + 1
    return 1 if s[0] <= 1e-6 else min(k, cap)


@pytest.mark.parametrize("method,param", [("sv_ratio", 4.0), ("sv_ratio", 30.0), ("sv_fro", 0.9),
                                          ("sv_fro", 0.995), ("sv_cumulative", 0.6), ("sv_cumulative", 0.9)])
def test_kohya_dynamic_ranks_match_full_svd_reference(loras, tmp_path, method, param):
    out = tmp_path / "dyn.safetensors"
    argv = ["--model", loras["spectral"], "--save_to", out, "--new_rank", 12, "--new_conv_rank", 6,
            "--dynamic_method", method, "--dynamic_param", param, "--save_precision", "fp16"]
    assert run(argv) == 0
    sd, _ = load_lora(loras["spectral"])
    got = ranks(out)
    expected = {}
    for n, m in split_modules(sd).items():
        s = torch.linalg.svdvals(compose(m.up.double(), m.down.double()).reshape(m.up.shape[0], -1)).numpy()
        expected[n] = _reference_rank(s, method, param, 6 if m.is_conv else 12)
    assert got == expected
    assert len(set(got.values())) > 2  # the spectra differ, so must the ranks
    meta = read_metadata(out)
    assert meta["ss_network_dim"] == meta["ss_network_alpha"] == "Dynamic"
    assert meta["ss_training_comment"] == f"Dynamic resize with {method}: {param} from 16; test"


def test_keep_one_more_rule_example_from_spec():
    s = torch.tensor([10, 5, 2, 1, 0.5, 0.1])
    assert choose_rank(s, 6, 100, "sv_ratio", 4.0) == 3
    assert choose_rank(torch.zeros(4), 4, 100, "sv_fro", 0.9) == 1  # all-zero layer
    assert choose_rank(s, 6, 2, "sv_ratio", 4.0) == 2  # capped by --new_rank


def test_kohya_verbose_lines_and_report(loras, tmp_path, capsys):
    out, png = tmp_path / "v.safetensors", tmp_path / "v.png"
    assert run(["--model", loras["plain"], "--save_to", out, "--new_rank", 2, "--verbose", "--report", png]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(ranks(loras["plain"])) + 1
    assert "| sum(S) retained:" in lines[0] and lines[-1].startswith("Average Frobenius norm retention:")
    colours = {c for _, c in Image.open(png).convert("RGB").getcolors(1 << 20)}
    assert _rgb(KEPT) in colours and _rgb(DROPPED) in colours


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


# ---- base-model-aware form -----------------------------------------------------------------------------

def _scale_sigma(path: Path) -> dict[str, torch.Tensor]:
    return {n: torch.linalg.svdvals(d) for n, d in deltas(path).items()}


def test_aware_threshold_recipes_keep_what_the_scores_say(loras, tiny_checkpoints, tmp_path, capsys):
    ckpt = tiny_checkpoints["sd1"]
    recipes = "fro_ckpt=1,thr=-2.3:spn_ckpt=0.5,fro_lora=0.5,thr=-0.9"
    assert run([ckpt, loras["spectral"], "-o", tmp_path, "-t", "32", "-r", recipes,
                "--cache_dir", tmp_path / "cache", "-vv"]) == 0
    text = capsys.readouterr().err
    w = base_weights(ckpt)
    fro = {n: math.log10(float(x.norm())) for n, x in w.items()}
    spn = {n: math.log10(float(torch.linalg.svdvals(x)[0])) for n, x in w.items()}
    names = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert names == ["spectral_frockpt1_th-2.3.safetensors", "spectral_frolora0.5_spnckpt0.5_th-0.9.safetensors"]
    sigma, before = _scale_sigma(loras["spectral"]), deltas(loras["spectral"])
    for fname, score in (
        (names[0], lambda n, s: torch.log10(s) - fro[n]),
        (names[1], lambda n, s: torch.log10(s) - 0.5 * spn[n] - 0.5 * math.log10(float(s.norm()))),
    ):
        thr = -2.3 if "th-2.3" in fname else -0.9
        got, after = ranks(tmp_path / fname), deltas(tmp_path / fname)
        for n, s in sigma.items():
            s = s[s > 1e-9 * s[0]]
            k = int((score(n, s) >= thr).sum())
            assert got.get(n, 0) == k, (fname, n)
            if k:
                err = float((after[n] - before[n]).norm())
                assert err == pytest.approx(float(s[k:].pow(2).sum().sqrt()), rel=1e-3, abs=1e-6), n
        meta = read_metadata(tmp_path / fname)
        params = json.loads(meta["resize_params"])
        assert params["threshold"] == thr and abs(sum(params["weights"].values()) - 1) < 1e-9
        assert meta["ss_network_dim"] == "Dynamic"
    assert "Score quantiles: 0.01:" in text and "threshold -2.30" in text
    assert sum(line.startswith("DEBUG: dim:") and "rle_lora:" in line for line in text.splitlines()) == 2 * len(sigma)


@pytest.mark.parametrize("size", [0.05, 0.2, 0.5])
def test_aware_size_lands_on_target(loras, tiny_checkpoints, tmp_path, size):
    assert run([tiny_checkpoints["sd1"], loras["plain"], "-o", tmp_path, "-r", f"fro_ckpt=1,size={size}",
                "--no_cache"]) == 0
    (out,) = tmp_path.glob("*.safetensors")
    assert abs(out.stat().st_size / (size * 2**20) - 1) < 0.02, out.stat().st_size


def test_aware_size_below_smallest_and_above_everything(loras, tiny_checkpoints, tmp_path):
    full = 0
    for size in (1e-4, 1000):
        d = tmp_path / str(size)
        assert run([tiny_checkpoints["sd1"], loras["plain"], "-o", d, "-r", f"fro_ckpt=1,size={size}", "--no_cache"]) == 0
        (out,) = d.glob("*.safetensors")
        got = ranks(out)
        if size < 1:
            assert got and sum(got.values()) == 1  # smallest feasible file: the single best direction
        else:
            full = got
    assert full == ranks(loras["plain"])
    assert "_th-inf.safetensors" in next((tmp_path / "1000").glob("*")).name


def test_norms_cache_reused_identical_faster_and_rebuilt(loras, tiny_checkpoints, tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "base.safetensors"
    shutil.copy(tiny_checkpoints["sdxl"], ckpt)
    lora = make_lora(ckpt, tmp_path / "xl.safetensors", rank=8, conv=True, seed=5)
    cache = tmp_path / "cache"
    argv = [ckpt, lora, "-r", "spn_ckpt=1,thr=-1.5", "--cache_dir", cache, "-v"]

    # "faster" without a timed assertion: count the base-weight norm computations the cache saves
    from library.resize import base as resize_base

    calls = []
    for kind, fn in list(resize_base.NORMS.items()):
        monkeypatch.setitem(resize_base.NORMS, kind, lambda w, fn=fn, kind=kind: calls.append(kind) or fn(w))

    def once(out: str) -> tuple[bytes, int, str]:
        capsys.readouterr()
        calls.clear()
        assert run([*argv, "-o", tmp_path / out]) == 0
        t = len(calls)
        (f,) = (tmp_path / out).glob("*.safetensors")
        return f.read_bytes(), t, capsys.readouterr().err

    first, t1, log1 = once("o1")
    (cache_file,) = cache.glob("*.json")
    assert "written" in log1 and "read from" not in log1
    second, t2, log2 = once("o2")
    assert "read from" in log2 and "written" not in log2
    assert second == first and t1 > 0 and t2 == 0

    cache_file.write_text("{not json")
    third, _, log3 = once("o3")
    assert third == first and "unreadable" in log3 and json.loads(cache_file.read_text())["norms"]

    other = dict(json.loads(cache_file.read_text()))  # the cache of another checkpoint under this name
    other["identity"] = {**other["identity"], "fingerprint": "0" * 64}
    other["norms"] = {k: {"fro": 1.0, "spn": 1.0} for k in other["norms"]}
    cache_file.write_text(json.dumps(other))
    fourth, _, log4 = once("o4")
    assert fourth == first and "stale" in log4

    from library.models.factory import write_random_checkpoint  # same path, new content: stale again
    write_random_checkpoint(ckpt, "sdxl", seed=7)
    _, _, log5 = once("o5")
    assert "stale" in log5


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_aware_sd2_sdxl_locon_every_layer_mapped_and_exact(family, tiny_checkpoints, tmp_path, capsys):
    ckpt = tiny_checkpoints[family]
    lora = make_lora(ckpt, tmp_path / "in.safetensors", rank=4, conv=True, seed=11)
    assert run([ckpt, lora, "-o", tmp_path / "o", "-t", "32", "-r", "fro_ckpt=1,thr=-inf",
                "--cache_dir", tmp_path / "c"]) == 0
    assert "WARNING" not in capsys.readouterr().err  # every module found its base weight (OpenCLIP q/k/v too)
    (out,) = (tmp_path / "o").glob("*.safetensors")
    before, after = deltas(lora), deltas(out)
    assert before.keys() == after.keys()
    assert max(float((after[n] - d).norm() / d.norm()) for n, d in before.items()) < 1e-5
    (cache_file,) = (tmp_path / "c").glob("*.json")
    assert any(k.endswith("in_proj_weight[0:32]") for k in json.loads(cache_file.read_text())["norms"])


def test_aware_unmapped_kept_zero_dropped(tiny_checkpoints, tmp_path, capsys):
    ckpt = tiny_checkpoints["sdxl"]
    targets, _ = _targets(ckpt, False)
    zero_name = next(n for n in targets if n.startswith("lora_te1_text_model_encoder_layers_1_"))
    extra = {"lora_unet_bogus_layer.lora_down.weight": torch.randn(2, 7), "lora_unet_bogus_layer.lora_up.weight":
             torch.randn(5, 2), "lora_unet_bogus_layer.alpha": torch.tensor(2.0)}
    lora = make_lora(ckpt, tmp_path / "in.safetensors", rank=4, seed=3, extra=extra)
    sd, meta = load_lora(lora)
    sd[f"{zero_name}.lora_up.weight"] = torch.zeros_like(sd[f"{zero_name}.lora_up.weight"])
    save_lora(lora, sd, meta)
    assert run([ckpt, lora, "-o", tmp_path / "o", "-r", "fro_lora=1,thr=-1", "--no_cache"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 2
    assert any("1 LoRA modules have no matching weight" in w and "lora_unet_bogus_layer" in w for w in warnings)
    assert any("all zeroes" in w and zero_name in w for w in warnings)
    (out,) = (tmp_path / "o").glob("*.safetensors")
    got, _ = load_lora(out)
    assert torch.equal(got["lora_unet_bogus_layer.lora_up.weight"].float(), extra["lora_unet_bogus_layer.lora_up.weight"].half().float())
    assert f"{zero_name}.lora_down.weight" not in got


def test_aware_weighted_merge_and_wildcards(loras, tiny_checkpoints, tmp_path):
    ckpt = tiny_checkpoints["sd1"]
    spec = f"{loras['a']}:0.7,{loras['b']}:0.3"
    assert run([ckpt, spec, "-o", tmp_path / "m", "-t", "32", "-r", "fro_lora=1,thr=-inf", "--no_cache"]) == 0
    (out,) = (tmp_path / "m").glob("*.safetensors")
    assert out.name == "alpha+beta(0.70+0.30)_frolora1_th-inf.safetensors"
    da, db, dm = deltas(loras["a"]), deltas(loras["b"]), deltas(out)
    for n in da:
        want = 0.7 * da[n] + 0.3 * db[n]
        assert float((dm[n] - want).norm() / want.norm()) < 1e-5, n
    assert run([ckpt, str(loras["a"].parent / "*-*.safetensors"), "-o", tmp_path / "w", "-r",
                "fro_ckpt=1,thr=-2:fro_ckpt=1,thr=-2.5", "--no_cache"]) == 0
    assert sorted(p.name for p in (tmp_path / "w").glob("*")) == [
        "alpha-one_frockpt1_th-2.5.safetensors", "alpha-one_frockpt1_th-2.safetensors"]


def test_aware_report_png(loras, tiny_checkpoints, tmp_path):
    png = tmp_path / "r.png"
    assert run([tiny_checkpoints["sd1"], loras["plain"], "-o", tmp_path, "-r", "fro_ckpt=1,thr=-1.5",
                "--report", png, "--no_cache"]) == 0
    img = Image.open(png).convert("RGB")
    assert img.width > 1000 and img.height > 1000
    colours = {c for _, c in img.getcolors(1 << 20)}
    assert _rgb(KEPT) in colours and _rgb(DROPPED) in colours


@pytest.mark.parametrize("recipe,token", [
    ("fro_ckpt=1,thr=-3,size=10", "size=10"),
    ("fro_ckpt=1,frobenius=2,thr=-3", "frobenius"),
    ("fro_ckpt=abc,thr=-3", "fro_ckpt=abc"),
    ("fro_ckpt=1,thr=", "thr="),
    ("fro_ckpt=1", "no selector"),
    ("fro_ckpt=1,thr=-3:params,size=x", "size=x"),
])
def test_bad_recipes_end_with_one_line_naming_the_token(recipe, token, tmp_path, capsys):
    assert run([tmp_path / "missing.safetensors", tmp_path / "missing_lora.safetensors", "-r", recipe]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: recipe") and token in err and "\n" not in err


def test_bad_inputs_are_one_line_errors(loras, tiny_checkpoints, tmp_path, capsys):
    cases = [
        [tiny_checkpoints["sd1"], f"{loras['a']}:-0.5,{loras['b']}", "-r", "fro_lora=1,thr=-1"],
        [tiny_checkpoints["sd1"], str(tmp_path / "nothing*.safetensors")],
        [tiny_checkpoints["sdxl"], loras["a"], "--no_cache"],
        ["--model", loras["a"], "--save_to", tmp_path / "x.bin"],
        ["--model", loras["a"], "--save_to", tmp_path / "x.safetensors", "--dynamic_method", "sv_fro"],
    ]
    for argv in cases:
        assert run(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith("error: ") and "Traceback" not in err and "WARNING" not in err, err
    assert not list(tmp_path.glob("*.safetensors"))


# ---- low-rank helpers added for resize -------------------------------------------------------------------

def test_factored_svd_builds_only_the_asked_directions_exactly():
    from library.lowrank import factored_svd_of_product

    g = torch.Generator().manual_seed(0)
    for out, r, n_in in [(300, 8, 700), (5, 8, 70), (200, 100, 90), (640, 96, 2880)]:
        up, down = torch.randn(out, r, generator=g, dtype=torch.float64), torch.randn(r, n_in, generator=g, dtype=torch.float64)
        f = factored_svd_of_product(up, down)
        full = up @ down
        assert torch.allclose(f.s, torch.linalg.svdvals(full)[: f.s.shape[0]], rtol=1e-10)
        assert float(((f.u() * f.s) @ f.vh() - full).norm() / full.norm()) < 1e-12
        idx = torch.tensor([0, f.s.shape[0] - 1])
        assert torch.allclose(f.u(idx), f.u()[:, idx]) and torch.allclose(f.vh(idx), f.vh()[idx])


def test_top_singular_value_lanczos_is_accurate_on_flat_spectra():
    from library.lowrank import top_singular_value

    g = torch.Generator().manual_seed(1)
    for shape in [(40, 30), (600, 400), (300, 1500)]:
        m = torch.randn(*shape, generator=g)
        exact = float(torch.linalg.svdvals(m.double())[0])
        assert abs(top_singular_value(m) - exact) / exact < 1e-3
    assert top_singular_value(torch.zeros(100, 200)) == 0.0


def test_kohya_peft_and_controllora_pairs_and_passthrough():
    from library.resize.kohya import KohyaSettings, resize_state_dict

    g = torch.Generator().manual_seed(4)
    sd = {"base_model.q.lora_A.weight": torch.randn(6, 40, generator=g),
          "base_model.q.lora_B.weight": torch.randn(30, 6, generator=g),
          "ctrl.conv.down": torch.randn(6, 8, 3, 3, generator=g), "ctrl.conv.up": torch.randn(16, 6, 1, 1, generator=g),
          "ctrl.conv.alpha": torch.tensor(3.0), "other.bias": torch.randn(5, generator=g)}
    res = resize_state_dict(sd, KohyaSettings(new_rank=4, new_conv_rank=2))
    out = res.state_dict
    assert out["base_model.q.lora_A.weight"].shape == (4, 40) and out["base_model.q.lora_B.weight"].shape == (30, 4)
    assert out["ctrl.conv.down"].shape == (2, 8, 3, 3) and out["ctrl.conv.up"].shape == (16, 2, 1, 1)
    assert float(out["ctrl.conv.alpha"]) == pytest.approx(3.0 / 6 * 2) and float(out["base_model.q.alpha"]) == 4.0
    assert torch.equal(out["other.bias"], sd["other.bias"])
    full = sd["base_model.q.lora_B.weight"].double() @ sd["base_model.q.lora_A.weight"].double()
    got = out["base_model.q.lora_B.weight"].double() @ out["base_model.q.lora_A.weight"].double()
    assert float((got - full).norm()) == pytest.approx(float(torch.linalg.svdvals(full)[4:].pow(2).sum().sqrt()), rel=1e-4)

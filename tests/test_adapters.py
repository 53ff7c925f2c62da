"""library.adapters: ΔW of every algorithm/variant against the spec's formulas (float64, written out here by
index) and, where lycoris-lora is importable, against LyCORIS' own modules (spec §12.3, never its double-scaled
get_diff_weight)."""

from __future__ import annotations

import itertools

import pytest
import torch

import library.adapters as A
from library.errors import ToolkitError

DT = torch.float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def g(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=DT)


# -- spec formulas, written independently of library.adapters (slow index form, tiny sizes) ------------------

def spec_kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """kron by definition: out[i·p + k, j·q + l] = a[i,j]·b[k,l] (b may carry a kernel)."""
    p, q = b.shape[:2]
    out = torch.zeros(a.shape[0] * p, a.shape[1] * q, *b.shape[2:], dtype=DT)
    for i, j in itertools.product(range(a.shape[0]), range(a.shape[1])):
        out[i * p:(i + 1) * p, j * q:(j + 1) * q] = a[i, j] * b
    return out


def spec_tucker(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """R[p,q,k,l] = Σ_ab t[a,b,k,l]·wa[a,p]·wb[b,q]."""
    out = torch.zeros(wa.shape[1], wb.shape[1], *t.shape[2:], dtype=DT)
    for a, b in itertools.product(range(t.shape[0]), range(t.shape[1])):
        out += t[a, b][None, None] * torch.outer(wa[a], wb[b])[..., None, None]
    return out


LAYERS = {"linear": (12, 20, ()), "conv1x1": (12, 20, (1, 1)), "conv3x3": (8, 6, (3, 3))}


def _flat(out: int, inn: int, k: tuple) -> tuple[int, ...]:
    return (out, inn, *k) if k else (out, inn)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("tucker", [False, True])
def test_loha_formula(layer: str, tucker: bool) -> None:
    out, inn, k = LAYERS[layer]
    if tucker and k != (3, 3):
        pytest.skip("Tucker only on kxk kernels")
    r, alpha = 3, 1.5
    shape = _flat(out, inn, k)
    if tucker:
        t = {"hada_w1_a": g(r, out), "hada_w1_b": g(r, inn), "hada_w2_a": g(r, out), "hada_w2_b": g(r, inn),
             "hada_t1": g(r, r, 3, 3), "hada_t2": g(r, r, 3, 3)}
        want = spec_tucker(t["hada_t1"], t["hada_w1_a"], t["hada_w1_b"]) * \
            spec_tucker(t["hada_t2"], t["hada_w2_a"], t["hada_w2_b"])
    else:
        cols = inn * (9 if k == (3, 3) else 1)
        t = {"hada_w1_a": g(out, r), "hada_w1_b": g(r, cols), "hada_w2_a": g(out, r), "hada_w2_b": g(r, cols)}
        want = ((t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])).reshape(shape)
    t["alpha"] = torch.tensor(alpha)
    got = A.delta_weight(t, shape)
    assert A.algorithm_of(t) == "loha" and got.dtype == DT
    assert rel(got, alpha / r * want) < 1e-6


LOKR_CASES = ["w2_lowrank", "w2_full", "decompose_both", "tucker", "both_full"]


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("case", LOKR_CASES)
def test_lokr_formula(layer: str, case: str) -> None:
    out, inn, k = LAYERS[layer]
    if case == "tucker" and k != (3, 3):
        pytest.skip("Tucker only on kxk kernels")
    (ol, ok), (im, i_n) = A.lokr_factorization(out, -1), A.lokr_factorization(inn, -1)
    r, alpha = 2, 3.0
    kk = 9 if k == (3, 3) else 1
    t: dict[str, torch.Tensor] = {"alpha": torch.tensor(alpha)}
    if case == "decompose_both":
        t["lokr_w1_a"], t["lokr_w1_b"] = g(ol, r), g(r, im)
        w1 = t["lokr_w1_a"] @ t["lokr_w1_b"]
    else:
        t["lokr_w1"] = w1 = g(ol, im)
    kernel = k if k == (3, 3) else ()
    if case in ("w2_full", "both_full"):
        t["lokr_w2"] = w2 = g(ok, i_n, *kernel) if kernel else g(ok, i_n)
        if k == (1, 1):
            t["lokr_w2"] = w2 = g(ok, i_n, 1, 1)
    elif case == "tucker":
        t["lokr_w2_a"], t["lokr_w2_b"], t["lokr_t2"] = g(r, ok), g(r, i_n), g(r, r, 3, 3)
        w2 = spec_tucker(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
    else:
        t["lokr_w2_a"], t["lokr_w2_b"] = g(ok, r), g(r, i_n * kk)
        w2 = (t["lokr_w2_a"] @ t["lokr_w2_b"]).reshape(ok, i_n, *kernel) if kernel else t["lokr_w2_a"] @ t["lokr_w2_b"]
    want = spec_kron(w1, w2)
    scale = 1.0 if case in ("w2_full", "both_full") and "lokr_w1" in t else alpha / r
    if case == "both_full":
        t["alpha"] = torch.tensor(100000.0)  # LyCORIS' full-matrix alpha: ignored, scale 1
    shape = _flat(out, inn, k)
    got = A.delta_weight(t, shape)
    assert rel(got, scale * want.reshape(shape)) < 1e-6
    assert A.scale_of(t) == scale


@pytest.mark.parametrize("layer", LAYERS)
def test_locon_and_tucker_formula(layer: str) -> None:
    out, inn, k = LAYERS[layer]
    r = 4
    shape = _flat(out, inn, k)
    down = g(r, inn, *k) if k else g(r, inn)
    up = g(out, r, 1, 1) if k else g(out, r)
    t = {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(2.0)}
    want = (up.reshape(out, r) @ down.reshape(r, -1)).reshape(shape) * 0.5
    assert rel(A.delta_weight(t, shape), want) < 1e-6
    if k == (3, 3):
        mid, d1, u1 = g(r, r, 3, 3), g(r, inn, 1, 1), g(out, r, 1, 1)
        t = {"lora_down.weight": d1, "lora_up.weight": u1, "lora_mid.weight": mid, "alpha": torch.tensor(2.0)}
        want = spec_tucker(mid, u1.reshape(out, r).T, d1.reshape(r, inn)) * 0.5
        assert rel(A.delta_weight(t, shape), want) < 1e-6


def spec_dora(w: torch.Tensor, m: torch.Tensor, out_axis: bool, s: float) -> torch.Tensor:
    """W' = V·(s(m/n − 1) + 1), n the per-row (output) or per-column (input) norm of V."""
    dims = tuple(d for d in range(w.ndim) if d != (0 if out_axis else 1))
    n = w.pow(2).sum(dims, keepdim=True).sqrt()
    return w * (s * (m.reshape(n.shape) / n - 1) + 1)


@pytest.mark.parametrize("algo", ["lora", "loha", "lokr"])
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("out_axis", [True, False])
def test_dora_formula(algo: str, layer: str, out_axis: bool) -> None:
    out, inn, k = LAYERS[layer]
    shape = _flat(out, inn, k)
    cols = inn * (9 if k == (3, 3) else 1)
    r = 2
    if algo == "lora":
        t = {"lora_down.weight": g(r, inn, *k) if k else g(r, inn), "lora_up.weight": g(out, r, 1, 1) if k else g(out, r)}
    elif algo == "loha":
        t = {"hada_w1_a": g(out, r), "hada_w1_b": g(r, cols), "hada_w2_a": g(out, r), "hada_w2_b": g(r, cols)}
    else:
        (ol, ok), (im, i_n) = A.lokr_factorization(out, 8), A.lokr_factorization(inn, 8)
        t = {"lokr_w1": g(ol, im), "lokr_w2_a": g(ok, r), "lokr_w2_b": g(r, i_n * (cols // inn))}
    t["alpha"] = torch.tensor(1.0)
    base = g(*shape)
    m = (g(out) if out_axis else g(1, inn)).abs() + 0.5
    t["dora_scale"] = m.reshape(out, *[1] * (len(shape) - 1)) if out_axis else m.reshape(1, inn, *[1] * (len(shape) - 2))
    v = base + A.delta_weight(t, shape)
    for s in (1.0, 0.5, 0.0):
        assert rel(A.apply_delta(base, t, s), spec_dora(v, m, out_axis, s)) < 1e-6
    if out_axis:  # peft's 1-D [out] magnitude means the output axis
        t["dora_scale"] = m.reshape(out)
        assert rel(A.dora_weight(base, t), spec_dora(v, m, True, 1.0)) < 1e-6


def test_scale_rules_and_refusals() -> None:
    t = {"lora_down.weight": g(4, 6), "lora_up.weight": g(5, 4)}
    assert A.scale_of(t) == 1.0  # missing alpha: 1, as ComfyUI/A1111
    t["alpha"] = torch.tensor(0.3, dtype=torch.bfloat16)
    assert A.scale_of(t) == 0.30078125 / 4  # bf16-rounded alpha is what every client reads
    for bad, kind in (({"on_input": g(1), "weight": g(5)}, "IA3"), ({"oft_blocks": g(2, 3, 3)}, "OFT"),
                      ({"a1.weight": g(3, 3)}, "GLoRA"), ({"foo": g(2)}, "unknown")):
        with pytest.raises(ToolkitError, match=f"module x: .*{kind}"):
            A.algorithm_of(bad, "x")
    with pytest.raises(ToolkitError, match="unknown key"):
        A.algorithm_of({**t, "hada_w1_a": g(2, 2), "lora_mid.weightx": g(1)}, "x")
    grouped = A.group_modules({"a.lora_up.weight": g(2, 1), "a.alpha": torch.tensor(1.0), "b.hada_w1_a": g(1, 1)})
    assert set(grouped) == {"a", "b"} and set(grouped["a"]) == {"lora_up.weight", "alpha"}


def test_factorization_numbers() -> None:
    m1 = {320: (16, 20), 640: (20, 32), 768: (24, 32), 1024: (32, 32), 1280: (32, 40), 2048: (32, 64),
          2560: (40, 64), 5120: (64, 80), 10240: (80, 128)}
    for dim, mn in m1.items():
        assert A.lokr_factorization(dim, -1) == mn
    assert A.lokr_factorization(320, 8) == (8, 40) and A.lokr_factorization(1280, 8) == (8, 160)


def test_factor_functions_differentiate() -> None:
    w1a, w1b, w2a, w2b = (g(4, 2).requires_grad_(), g(2, 6).requires_grad_(), g(4, 2).requires_grad_(),
                          g(2, 6).requires_grad_())
    A.loha_delta(w1a, w1b, w2a, w2b, scale=0.5).sum().backward()
    assert all(p.grad is not None for p in (w1a, w1b, w2a, w2b))
    w1 = g(2, 3).requires_grad_()
    A.lokr_delta(w1, None, None, None, w2a, w2b, shape=(8, 18)).square().sum().backward()
    assert w1.grad is not None
    mag = A.dora_magnitude(g(5, 7), out_axis=False).requires_grad_()
    A.weight_decompose(g(5, 7), mag, False, 1.0).sum().backward()
    assert mag.grad is not None and mag.shape == (1, 7)


def test_kron_applied_without_building_it() -> None:
    """x·kron(W1, W2)ᵀ and conv2d(x, kron(W1, W2)) (stride 2, padding 1) computed factor by factor."""
    w1, w2 = g(3, 4), g(5, 6)
    x = g(2, 7, 24)
    assert rel(A.kron_linear(x, w1, w2), x @ torch.kron(w1, w2).T) < 1e-12
    w2k = g(5, 6, 3, 3)
    xc = g(2, 24, 9, 9)
    want = torch.nn.functional.conv2d(xc, torch.kron(w1[..., None, None], w2k), None, 2, 1)
    assert rel(A.kron_conv2d(xc, w1, w2k, 2, 1), want) < 1e-12


# -- LyCORIS' own modules (spec §12.3) ----------------------------------------------------------------------

lycoris = pytest.importorskip("lycoris")


def _layer(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "linear":
        return torch.nn.Linear(64, 48).double()
    if kind == "conv1x1":
        return torch.nn.Conv2d(40, 24, 1).double()
    return torch.nn.Conv2d(16, 32, 3, padding=1).double()


LYCO = [("locon", {}), ("locon", {"use_tucker": True}), ("loha", {}), ("loha", {"use_tucker": True}),
        ("lokr", {"factor": -1}), ("lokr", {"factor": 8}), ("lokr", {"factor": 8, "decompose_both": True}),
        ("lokr", {"full_matrix": True}), ("lokr", {"factor": 4, "use_tucker": True}),
        ("lokr", {"factor": 4, "decompose_both": True, "full_matrix": False, "lora_dim": 1}),
        ("locon", {"weight_decompose": True}), ("locon", {"weight_decompose": True, "wd_on_out": False}),
        ("loha", {"weight_decompose": True}), ("loha", {"weight_decompose": True, "wd_on_out": False}),
        ("lokr", {"weight_decompose": True, "factor": 8}), ("lokr", {"weight_decompose": True, "wd_on_out": False}),
        ("loha", {"rs_lora": True})]


@pytest.mark.parametrize("kind", ["linear", "conv1x1", "conv3x3"])
@pytest.mark.parametrize("algo,kw", LYCO, ids=[f"{a}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for a, kw in LYCO])
def test_matches_lycoris_modules(kind: str, algo: str, kw: dict) -> None:
    from lycoris.modules.locon import LoConModule
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.lokr import LokrModule

    cls = {"locon": LoConModule, "loha": LohaModule, "lokr": LokrModule}[algo]
    layer = _layer(kind)
    kw = {"lora_dim": 2, "alpha": 1.5, **kw}
    m = cls("lora_unet_x", layer, 1.0, **kw).double()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if not name.startswith("org") and name != "dora_scale":
                p.copy_(torch.randn_like(p) * 0.3)
            elif name == "dora_scale":
                p.mul_(1 + 0.2 * torch.rand_like(p))
    m.eval()
    sd = {k: v.detach() for k, v in m.custom_state_dict().items()}
    w = layer.weight.detach()
    for s in (1.0, 0.5):
        with torch.no_grad():
            if algo == "locon":
                ref = m.get_merged_weight(multiplier=s)[0] - w
            elif getattr(m, "wd", False):
                ref = m.apply_weight_decompose(w + m.get_weight(m.shape), s) - w
            else:
                ref = s * m.get_weight(m.shape) * m.scalar
        ours = A.apply_delta(w, sd, s) - w
        assert rel(ours, ref) < 1e-6, (algo, kw, s)
    # the forward LyCORIS trains with sees the same weight at strength 1
    x = torch.randn(3, *((64,) if kind == "linear" else (layer.in_channels, 5, 5)), dtype=DT)
    with torch.no_grad():
        m.multiplier = 1.0
        m.apply_to()
        y_ref = layer(x)
        m.restore()
        patched = _layer(kind)
        patched.weight.data = A.apply_delta(w, sd, 1.0)
        assert rel(patched(x), y_ref) < 1e-6

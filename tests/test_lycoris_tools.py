"""The LoRA tools on LyCORIS files (LoHa, LoKr, Tucker LoCon, DoRA) for a tiny SD1 model: merge into a checkpoint
equals base + ΔW, svd_merge/resize reach the Eckart-Young error of the summed ΔW, DoRA needs the base model,
LoRA+LoRA merging refuses what it cannot join."""

from __future__ import annotations

import pytest
import torch

import library.adapters as A
from library.cli import run_main
from library.files import load_state_dict
from library.keys import checkpoint_targets, detect_family
from library.lora_io import save_lora
from library.merge import tensor_shapes
from library.random_lora import random_lycoris
from networks import convert_lora, merge_lora, resize_lora, svd_merge_lora

pytestmark = pytest.mark.usefixtures("one_thread")
FILES = {
    "loha": dict(algo="loha", dim=3, alpha=1.5, conv=True, tucker=True),
    "lokr": dict(algo="lokr", dim=2, alpha=4.0, factor=4, conv=True),
    "lokr_both": dict(algo="lokr", dim=1, alpha=0.5, factor=-1, decompose_both=True, conv=True),
    "locon_dora": dict(algo="locon", dim=4, alpha=2.0, conv=True, tucker=True, dora="out"),
    "loha_dora_in": dict(algo="loha", dim=2, alpha=2.0, dora="in"),
}


@pytest.fixture(scope="module")
def files(tiny_checkpoints, tmp_path_factory):  # noqa: ANN001, ANN201
    d = tmp_path_factory.mktemp("lyco")
    ckpt = tiny_checkpoints["sd1"]
    paths = {}
    for i, (key, kw) in enumerate(FILES.items()):
        paths[key] = d / f"{key}.safetensors"
        save_lora(paths[key], random_lycoris(ckpt, seed=i, std=0.2, **kw), {"ss_network_module": "lycoris.kohya"})
    base, _ = load_state_dict(ckpt)
    shapes = tensor_shapes(base)
    return {"dir": d, "ckpt": ckpt, "paths": paths, "base": base,
            "targets": checkpoint_targets(shapes, detect_family(shapes))}


def _base(files, name):  # noqa: ANN001, ANN202
    t = files["targets"][name]
    w = files["base"][t.key].double()
    return w[t.rows[0]:t.rows[1]] if t.rows else w


def _modules(path):  # noqa: ANN001, ANN202
    return A.group_modules(load_state_dict(path)[0])


def _delta(files, name, mod):  # noqa: ANN001, ANN202
    """W' − W at strength 1 in float64, flattened to [out, in·kh·kw]."""
    w = _base(files, name)
    mod = {k: v.double() for k, v in mod.items()}
    return (A.apply_delta(w, mod) - w).flatten(1)


def test_merge_into_checkpoint_is_base_plus_delta(files, tmp_path):  # noqa: ANN001
    out = tmp_path / "merged.safetensors"
    merge_lora.main(["--sd_model", str(files["ckpt"]), "--save_to", str(out),
                     "--models", str(files["paths"]["lokr"]), str(files["paths"]["locon_dora"]), "--ratios", "0.7", "1"])
    merged, _ = load_state_dict(out)
    lokr, dora = _modules(files["paths"]["lokr"]), _modules(files["paths"]["locon_dora"])
    checked = 0
    for name, t in files["targets"].items():
        if name not in lokr or t.rows:
            continue
        w = files["base"][t.key].double()
        want = A.apply_delta(w, {k: v.double() for k, v in lokr[name].items()}, 0.7)
        if name in dora:
            want = A.apply_delta(want, {k: v.double() for k, v in dora[name].items()}, 1.0)
        got = merged[t.key].double()
        assert float((got - want).norm() / (want - w).norm()) < 1e-5, name
        checked += 1
    assert checked > 10


def _eckart_young(got: torch.Tensor, want: torch.Tensor, k: int) -> None:
    s = torch.linalg.svdvals(want)
    best = float(s[k:].pow(2).sum().sqrt())
    err = float((got - want).norm())
    assert err <= best * (1 + 1e-4) + 1e-6 * float(s[0]), (err, best)


def _lora_delta(mod):  # noqa: ANN001, ANN202
    return A.delta_weight({k: v.double() for k, v in mod.items()}).flatten(1)


def test_svd_merge_mixed_algorithms_reaches_eckart_young(files, tmp_path, capsys):  # noqa: ANN001
    out = tmp_path / "svd.safetensors"
    ratios = (1, -0.5, 0.8, 0.6)
    models = [str(files["paths"][k]) for k in ("loha", "lokr", "locon_dora", "lokr_both")]
    argv = ["--save_to", str(out), "--models", *models, "--ratios", *map(str, ratios), "--new_rank", "3"]
    assert run_main(svd_merge_lora.main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DoRA" in err and "--sd_model" in err and not out.exists()
    svd_merge_lora.main([*argv, "--sd_model", str(files["ckpt"])])
    merged = _modules(out)
    inputs = [_modules(p) for p in models]
    for name, mod in merged.items():
        assert A.algorithm_of(mod) == "lora" and not A.is_dora(mod)
        want = sum(r * _delta(files, name, m[name]) for m, r in zip(inputs, ratios) if name in m)
        _eckart_young(_lora_delta(mod), want, 3)


def test_resize_kohya_form_reaches_eckart_young(files, tmp_path, capsys):  # noqa: ANN001
    for key in ("loha",):  # LoKr (factor 4 and decompose_both) in the merge and svd_merge tests
        out = tmp_path / f"{key}-r2.safetensors"
        resize_lora.main(["--model", str(files["paths"][key]), "--save_to", str(out), "--new_rank", "2"])
        src, res = _modules(files["paths"][key]), _modules(out)
        assert set(src) == set(res)
        for name, mod in res.items():
            assert A.algorithm_of(mod) == "lora"
            _eckart_young(_lora_delta(mod), _delta(files, name, src[name]), 2)
    out = tmp_path / "dora-r2.safetensors"
    argv = ["--model", str(files["paths"]["loha_dora_in"]), "--save_to", str(out), "--new_rank", "2"]
    assert run_main(resize_lora.main, argv) == 2
    assert "DoRA" in capsys.readouterr().err and not out.exists()
    resize_lora.main([*argv, "--sd_model", str(files["ckpt"])])
    src, res = _modules(files["paths"]["loha_dora_in"]), _modules(out)
    for name, mod in res.items():
        _eckart_young(_lora_delta(mod), _delta(files, name, src[name]), 2)


def test_resize_aware_form_reads_dora_with_its_checkpoint(files, tmp_path):  # noqa: ANN001
    resize_lora.main([str(files["ckpt"]), str(files["paths"]["locon_dora"]), "-o", str(tmp_path), "-t", "32",
                      "-r", "fro_ckpt=1,thr=-6", "--no_cache"])
    (out,) = tmp_path.glob("locon_dora_*.safetensors")
    src, res = _modules(files["paths"]["locon_dora"]), _modules(out)
    assert res and all(A.algorithm_of(m) == "lora" and not A.is_dora(m) for m in res.values())
    name = next(n for n in res if "conv1" in n)  # a Tucker 3x3 LoCon with DoRA, kept near-exactly at thr -6
    want = _delta(files, name, src[name])
    assert float((_lora_delta(res[name]) - want).norm() / want.norm()) < 1e-3


def test_lora_plus_lora_refuses_lycoris_modules(files, tmp_path, capsys):  # noqa: ANN001
    out = tmp_path / "cat.safetensors"
    argv = ["--save_to", str(out), "--models", str(files["paths"]["loha"]), "--concat"]
    assert run_main(merge_lora.main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LoHa" in err and "svd_merge_lora.py" in err and not out.exists()


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_convert_to_diffusers_applies_every_module(family, tiny_checkpoints, tmp_path, capsys):  # noqa: ANN001
    """LoHa (Tucker convs) + DoRA LoCon, converted exactly for diffusers: `load_lora_weights` creates every module
    with the file's ΔW (DoRA: W' − W against the base); at --rank 1 the printed error is the Eckart-Young one."""
    from test_convert_lora import _pipeline, diffusers_deltas

    from library.models.factory import random_bundle

    ckpt = tiny_checkpoints[family]
    # text encoders on SD1 only (SDXL's two, as plain LoRA, in test_convert_lora)
    sd = random_lycoris(ckpt, "loha", 2, 1.0, conv=True, tucker=True, std=0.3, seed=3, te=family == "sd1")
    dora = random_lycoris(ckpt, "locon", 2, 1.0, dora="out", std=0.3, seed=4, te=False)
    sd = {k: v for k, v in sd.items() if "_attn2_" not in k}  # cross-attention modules: DoRA LoCon instead
    sd.update({k: v for k, v in dora.items() if "_attn2_" in k})
    src = tmp_path / "lyco.safetensors"
    save_lora(src, sd)
    out = tmp_path / "d.safetensors"
    argv = [str(src), str(out), "--to", "diffusers"]
    assert run_main(convert_lora.main, argv) == 2 and "DoRA" in capsys.readouterr().err
    convert_lora.main([*argv, "--sd_model", str(ckpt)])
    assert "relative error 0 " in capsys.readouterr().out  # exact
    base, _ = load_state_dict(ckpt)
    shapes = tensor_shapes(base)
    files = {"base": base, "targets": checkpoint_targets(shapes, detect_family(shapes))}
    want = {n: _delta(files, n, m).float() for n, m in A.group_modules(sd).items()}
    pipe = _pipeline(random_bundle(family))
    pipe.load_lora_weights(str(out), adapter_name="a")
    got = diffusers_deltas(pipe, family == "sdxl", "a")
    assert set(got) == set(want)
    for n, d in want.items():
        assert float((got[n].flatten(1) - d).norm() / d.norm()) < 1e-4, n
    if family == "sdxl":  # the error printed at a lower --rank is checked once, on SD1
        return
    low = tmp_path / "r1.safetensors"
    convert_lora.main([str(src), str(low), "--to", "kohya", "--rank", "1", "--sd_model", str(ckpt)])
    line = capsys.readouterr().out
    errs = [(torch.linalg.svdvals(d.double())[1:].pow(2).sum(), d.double().pow(2).sum()) for d in want.values()]
    expect = float(sum(e for e, _ in errs) / sum(n for _, n in errs)) ** 0.5
    assert f"relative error {expect:.3g}" in line, (line, expect)


def test_check_reports_kinds_scales_and_traps(files, tmp_path, capsys):  # noqa: ANN001
    from networks import check_lora_weights

    assert check_lora_weights.main([str(files["paths"]["locon_dora"])]) == 0
    out = capsys.readouterr().out
    assert "LoCon Tucker +DoRA(out)" in out and "scale trap" not in out
    # a kohya_ss full-matrix preset alpha (100000) where some layers got low-rank factors
    sd = random_lycoris(files["ckpt"], "lokr", 8, alpha=100000.0, factor=-1, conv=True)
    low = [k.split(".")[0] for k in sd if k.endswith("lokr_w2_a")]
    path = tmp_path / "trap.safetensors"
    save_lora(path, sd)
    assert check_lora_weights.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert low and f"{len(low)} scale traps" in out and "switches per layer" in out
    assert "alpha/r = 100000/8 = 12500" in out


def test_convert_to_peft_keeps_loha_and_lokr(tiny_checkpoints, tmp_path, capsys):  # noqa: ANN001
    """kohya LoHa (Tucker convs) and LoKr files become PEFT LoHa/LoKr adapters that peft loads onto the tiny SD1
    U-Net and CLIP with the same ΔW per module; converted back they are LyCORIS files with the same ΔW. A DoRA
    LoHa, which PEFT cannot hold, becomes a plain LoRA with one warning naming DoRA."""
    import json

    from peft import LoHaConfig, LoKrConfig, inject_adapter_in_model, set_peft_model_state_dict

    from library.keys import lora_formats as lf
    from library.models.factory import random_bundle

    ckpt = tiny_checkpoints["sd1"]
    cases = {"loha": random_lycoris(ckpt, "loha", 2, 1.0, conv=True, tucker=True, std=0.3, seed=5),
             "lokr": random_lycoris(ckpt, "lokr", 2, 4.0, factor=4, conv=True, std=0.3, seed=6)}
    for algo, sd in cases.items():
        src, out, back = (tmp_path / f"{algo}{s}.safetensors" for s in ("", "-peft", "-back"))
        save_lora(src, sd)
        convert_lora.main([str(src), str(out), "--to", "peft"])
        tensors, meta = load_state_dict(out)
        packed = json.loads(meta["lora_adapter_metadata"])
        assert any(k.endswith(".hada_t1" if algo == "loha" else ".lokr_w1") for k in tensors)
        bundle = random_bundle("sd1")
        got = {}
        for comp, model in ((lf.UNET, bundle.unet), (lf.TE, bundle.text_encoders[0])):
            fields = {k.split(".", 1)[1]: v for k, v in packed.items() if k.startswith(comp + ".")}
            model = inject_adapter_in_model((LoHaConfig if algo == "loha" else LoKrConfig)(**fields), model)
            # file keys name CLIP layers `text_model.encoder…` as diffusers does; transformers 5 has no `text_model`
            level = "" if hasattr(model, "text_model") or comp == lf.UNET else "text_model."
            result = set_peft_model_state_dict(model, {k[len(comp) + 1:].removeprefix(level): v
                                                       for k, v in tensors.items() if k.startswith(comp + ".")})
            assert not result.unexpected_keys
            got.update({lf.module_to_kohya(comp, level + n, False): m.get_delta_weight("default").double()
                        for n, m in model.named_modules() if "default" in getattr(m, "_available_adapters", ())})
        want = {n: A.delta_weight({k: v.double() for k, v in t.items()}) for n, t in A.group_modules(sd).items()}
        assert set(got) == set(want) and len(want) > 50
        for n, d in want.items():
            assert float((got[n].flatten(1) - d.flatten(1)).norm() / d.norm()) < 1e-5, (algo, n)
        convert_lora.main([str(out), str(back), "--to", "kohya"])
        again = _modules(back)
        assert set(again) == set(want) and {A.algorithm_of(t) for t in again.values()} == {algo}
        for n, d in want.items():
            e = A.delta_weight({k: v.double() for k, v in again[n].items()})
            assert float((e.flatten(1) - d.flatten(1)).norm() / d.norm()) < 1e-5, (algo, n)
    src = tmp_path / "dora.safetensors"
    save_lora(src, random_lycoris(ckpt, "loha", 2, 1.0, dora="in", seed=7))
    out = tmp_path / "dora-peft.safetensors"
    capsys.readouterr()
    assert run_main(convert_lora.main, [str(src), str(out), "--to", "peft", "--sd_model", str(ckpt)]) == 0
    err = capsys.readouterr().err
    assert "DoRA" in err and "written as a plain LoRA" in err and "lora_te_text_model_encoder_" in err
    assert any(k.endswith(".lora_A.weight") for k in load_state_dict(out)[0])

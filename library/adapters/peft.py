"""LoHa and LoKr modules in PEFT's form (`peft.LoHaConfig`/`LoKrConfig` adapters) and back.

PEFT keeps LyCORIS' tensor names and shapes (`hada_w1_a` …, `lokr_w1` …, Tucker `hada_t1`/`lokr_t2` when
`use_effective_conv2d`), but its rules are coarser: one rank per module for both LoHa products and for both LoKr
factors, scale alpha/r always (no scale-1 rule for an all-full LoKr), one `decompose_factor`, `decompose_both` and
`use_effective_conv2d` for the whole adapter, no `full_matrix`/unbalanced factorization and no DoRA. `peft_modules`
says, module by module, what a file needs and refuses (with the variant's name) what PEFT cannot hold;
`kohya_modules` turns PEFT modules back into LyCORIS' tensors with the same ΔW.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from library.adapters import modules as M
from library.adapters.factors import lokr_factorization
from library.errors import ToolkitError

PEFT_TYPES = {M.LOHA: "LOHA", M.LOKR: "LOKR"}
Tensors = Mapping[str, torch.Tensor]


class NotInPeft(ToolkitError):
    """A module PEFT's LoHa/LoKr cannot hold (the message names the variant)."""


def _is_kxk(shape: Sequence[int]) -> bool:
    return len(shape) == 4 and tuple(shape[2:]) != (1, 1)


def _lokr_factor(modules: Mapping[str, Tensors], shapes: Mapping[str, Sequence[int]]) -> int:
    """The one `decompose_factor` that gives every module's W1 shape, or NotInPeft."""
    w1 = {}
    for name, t in modules.items():
        w1[name] = tuple(t["lokr_w1"].shape) if "lokr_w1" in t else (t["lokr_w1_a"].shape[0], t["lokr_w1_b"].shape[1])
    candidates = [-1] + sorted({d for s in w1.values() for d in s})
    for f in candidates:
        if all((lokr_factorization(shapes[n][0], f)[0], lokr_factorization(shapes[n][1], f)[0]) == w1[n]
               for n in modules):
            return f
    raise NotInPeft("LoKr whose factor differs between layers (or unbalanced_factorization): PEFT has one "
                    "decompose_factor")


def _lokr_rank(name: str, t: Tensors, shape: Sequence[int], decompose_both: bool) -> int:
    """The PEFT rank that rebuilds this module's structure (which factors are full)."""
    out_l, in_m = t["lokr_w1"].shape if "lokr_w1" in t else (t["lokr_w1_a"].shape[0], t["lokr_w1_b"].shape[1])
    out_k, in_n = shape[0] // out_l, shape[1] // in_m
    w1_full, w2_full = "lokr_w1" in t, "lokr_w2" in t
    ranks = {t[k].shape[0] for k in ("lokr_w1_b", "lokr_w2_b") if k in t}
    if len(ranks) > 1:
        raise NotInPeft(f"module {name}: LoKr with two ranks (W1 {t['lokr_w1_b'].shape[0]}, W2 "
                        f"{t['lokr_w2_b'].shape[0]}): PEFT has one rank per module")
    low = math.ceil(max(out_k, in_n) / 2)  # PEFT: W2 full exactly when r >= max(out_k, in_n)/2
    low1 = math.ceil(max(out_l, in_m) / 2)
    r = ranks.pop() if ranks else max(low, low1 if decompose_both else 1)
    ok = (r >= max(out_k, in_n) / 2) == w2_full
    if decompose_both:
        ok = ok and (r < max(out_l, in_m) / 2) != w1_full
    if not ok:
        variant = "full_matrix" if w2_full else "decompose_both" if not w1_full else "a low-rank W2 this large"
        raise NotInPeft(f"module {name}: LoKr with {variant} at rank {r}: PEFT's rank rule makes other factors")
    return r


def peft_modules(modules: Mapping[str, Tensors], shapes: Mapping[str, Sequence[int]]
                 ) -> tuple[str, dict[str, dict[str, torch.Tensor]], dict[str, object]]:
    """(algo, PEFT tensors per module, config fields) for modules that are all LoHa or all LoKr; `shapes` are
    the layers' weight shapes. The config's `rank_pattern`/`alpha_pattern` are keyed by the same names as
    `modules` (the caller turns them into PEFT patterns). NotInPeft names what PEFT lacks."""
    algos = {M.algorithm_of(t, n) for n, t in modules.items()}
    if len(algos) != 1 or not algos <= set(PEFT_TYPES):
        kinds = ", ".join(sorted(M.NAMES[a] for a in algos))
        raise NotInPeft(f"modules of {kinds}: PEFT holds one LoHa or one LoKr adapter")
    algo = algos.pop()
    dora = next((n for n, t in modules.items() if M.is_dora(t)), None)
    if dora:
        raise NotInPeft(f"module {dora}: DoRA (dora_scale): PEFT's {M.NAMES[algo]} has no DoRA")
    tucker_key = "hada_t1" if algo == M.LOHA else "lokr_t2"
    low_kxk = {n for n, t in modules.items() if _is_kxk(shapes[n]) and (algo == M.LOHA or "lokr_w2" not in t)}
    tucker = {n for n in low_kxk if tucker_key in modules[n]}
    if tucker and tucker != low_kxk:
        raise NotInPeft(f"k x k convs with and without Tucker cores ({tucker_key}): PEFT's use_effective_conv2d "
                        "is one setting")
    config: dict[str, object] = {"peft_type": PEFT_TYPES[algo], "use_effective_conv2d": bool(tucker),
                                 "rank_dropout": 0.0, "module_dropout": 0.0, "init_weights": True}
    ranks, alphas, out = {}, {}, {}
    if algo == M.LOKR:
        config["decompose_factor"] = _lokr_factor(modules, shapes)
        config["decompose_both"] = any("lokr_w1_a" in t for t in modules.values())
        config["rank_dropout_scale"] = False
    for name, t in modules.items():
        if algo == M.LOHA:
            r = int(t["hada_w1_b"].shape[0])
            if t["hada_w2_b"].shape[0] != r:
                raise NotInPeft(f"module {name}: LoHa with two ranks: PEFT has one rank per module")
        else:
            r = _lokr_rank(name, t, shapes[name], bool(config["decompose_both"]))
        ranks[name], alphas[name] = r, M.scale_of(t) * r
        out[name] = {k: v for k, v in t.items() if k not in ("alpha", "dora_scale")}
        if name not in tucker:  # flat factors: PEFT keeps them 2-D ([r, in·kh·kw])
            for key in ("hada_w1_b", "hada_w2_b", "lokr_w2_b"):
                if key in out[name]:
                    out[name][key] = out[name][key].reshape(out[name][key].shape[0], -1)
        if algo == M.LOKR and "lokr_w2" in out[name] and len(shapes[name]) == 2:
            out[name]["lokr_w2"] = out[name]["lokr_w2"].reshape(out[name]["lokr_w2"].shape[0], -1)
    config.update(_patterns(ranks, "r", "rank_pattern"), **_patterns(alphas, "alpha", "alpha_pattern"))
    return algo, out, config


def _patterns(values: Mapping[str, float], key: str, pattern: str) -> dict[str, object]:
    common = max(set(values.values()), key=list(values.values()).count)
    return {key: common, pattern: {n: v for n, v in values.items() if v != common}}


def kohya_modules(modules: Mapping[str, Tensors], rank: Mapping[str, int], alpha: Mapping[str, float]
                  ) -> dict[str, dict[str, torch.Tensor]]:
    """PEFT LoHa/LoKr modules (tensors by suffix; PEFT rank and alpha per module) as LyCORIS modules with the
    same ΔW: alpha = (PEFT alpha/r)·(LyCORIS' r); an all-full LoKr (LyCORIS scale 1) carries its scale in W1."""
    out = {}
    for name, t in modules.items():
        t = dict(t)
        scale = float(alpha[name]) / int(rank[name])
        algo = M.algorithm_of(t, name)
        if algo not in PEFT_TYPES:
            raise ToolkitError(f"module {name}: not a PEFT LoHa/LoKr module")
        if algo == M.LOKR and "lokr_w1" in t and "lokr_w2" in t:
            t["lokr_w1"] = t["lokr_w1"] * scale if scale != 1 else t["lokr_w1"]
            t["alpha"] = torch.tensor(float(rank[name]))
        else:
            t["alpha"] = torch.tensor(scale * M.rank_of(t))
        out[name] = t
    return out

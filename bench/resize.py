"""Benchmark networks/resize_lora.py (both forms) against re-implementations of the reference algorithms.

    python bench/resize.py [--families sd1 sdxl] [--ranks 32 128] [--kinds lora locon] [--cores 1]
                           [--full-ref sd1-r32-lora ...] [--out bench/out]

Inputs are written once into bench/out (gitignored): real-shape random checkpoints (fp16, streamed to disk
tensor by tensor) and random LoRAs of every LoRA-able weight (LierLa; LoCon adds the C3Lier convs).
Every subject runs in its own process pinned to --cores cores (the per-layer matrices are small: on a shared
machine OpenMP fan-out would measure contention, not the algorithm); the figures are the wall time of the
work after imports and the process's peak RSS.

Subjects
  ours-kohya     resize_lora.py --model L --save_to O --new_rank R/4 --new_conv_rank R/4 --save_precision fp16
  sd-scripts     reference (sd-scripts algorithm, spec lora-tools.md §6): M = up@down and torch.linalg.svd(M)
                 per module, U·S / Vh factors, same metadata and hashes. Its cost depends only on each module's
                 shape, so unless --full-ref names the case, one module per distinct shape is timed and the
                 total is extrapolated by the shape counts (marked "~").
  ours-aware     resize_lora.py CKPT L -r RECIPE, cold (empty norms cache) and warm (cache filled)
  qr-ref         QR-based reference (the algorithm of elias-gaeros/resize_lora, spec §9): QR of both factors,
                 SVD of the core, Frobenius norm and torch.svd_lowrank(q=1, niter=64) spectral norm of the
                 base weights, JSON norms cache; cold and warm
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECIPE = "fro_ckpt=1,thr=-3.5"  # the default recipe of both aware tools
SPN_RECIPE = "spn_ckpt=1,thr=-2.5"  # exercises the spectral norms (cold cache only)


# ---- inputs --------------------------------------------------------------------------------------------

def original_shapes(family: str) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a real-size original-layout checkpoint, from models built on the meta device."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from library.models.bundle import ModelBundle
    from library.models.factory import configs
    from library.models.single_file import to_original_state_dict

    cfg = configs(family, "real")
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**cfg["unet"]), AutoencoderKL(**cfg["vae"])
        tes = [(CLIPTextModelWithProjection if family == "sdxl" and i == 1 else CLIPTextModel)(CLIPTextConfig(**c))
               for i, c in enumerate(cfg["text_encoders"])]
    return {k: tuple(v.shape) for k, v in to_original_state_dict(ModelBundle(family, unet, vae, tes)).items()}


def write_checkpoint(path: Path, family: str) -> None:
    """Stream a random fp16 checkpoint to disk: header first, then one tensor at a time (little memory)."""
    import torch

    from library.files import atomic_path

    shapes = original_shapes(family)
    header, offset = {"__metadata__": {"bench": f"random {family} real-shape weights"}}, 0
    for k in sorted(shapes):
        n = math.prod(shapes[k]) * 2
        header[k] = {"dtype": "F16", "shape": list(shapes[k]), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    g = torch.Generator().manual_seed(0)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for k in sorted(shapes):
            shape = shapes[k]
            std = 1 / math.sqrt(math.prod(shape[1:])) if len(shape) >= 2 else 0.02
            f.write((torch.randn(shape, generator=g) * std).half().numpy().tobytes())


def write_lora(path: Path, ckpt: Path, rank: int, conv: bool) -> None:
    """Random LoRA over every LoRA-able weight of `ckpt` with a decaying spectrum, fp16, alpha = rank/2."""
    import torch

    from library.files import LazySafetensors
    from library.keys import checkpoint_targets, detect_family
    from library.lora_io import save_lora

    lz = LazySafetensors(ckpt)
    shapes = {k: lz.shape(k) for k in lz}
    targets = checkpoint_targets(shapes, detect_family(shapes))
    g = torch.Generator().manual_seed(rank + conv)
    decay = torch.exp(-torch.arange(rank) / (rank / 4))
    sd = {}
    for name, t in sorted(targets.items()):
        if not (t.group == "lierla" or (conv and t.group == "c3lier")):
            continue
        shape = shapes[t.key]
        out = t.rows[1] - t.rows[0] if t.rows else shape[0]
        inner = shape[1:]
        down = torch.randn(rank, *inner, generator=g) / math.sqrt(math.prod(inner))
        down *= decay.reshape(-1, *[1] * len(inner))
        up = torch.randn(out, rank, *([1, 1] if len(shape) == 4 else []), generator=g) * 0.01
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"] = down.half(), up.half()
        sd[f"{name}.alpha"] = torch.tensor(rank / 2, dtype=torch.float16)
    meta = {"ss_network_dim": str(rank), "ss_network_alpha": str(rank / 2), "ss_network_module": "networks.lora"}
    save_lora(path, sd, meta)


# ---- reference implementations (run inside a child process) --------------------------------------------

def _hashes(sd: dict, meta: dict) -> dict:
    from library.lora_io import precalculate_hashes

    h = precalculate_hashes(sd, meta)
    return {"sshs_model_hash": h[0], "sshs_legacy_hash": h[1]}


def ref_sdscripts(lora: str, out: str, new_rank: int, sample: bool, shape_times: str | None = None) -> dict:
    """sd-scripts' resize: full product, full SVD, fixed rank; `sample` times one module per shape (timings
    kept in `shape_times`, a JSON file shared by the cases, since the cost depends on the shapes only)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    sd = {k: v.float() for k, v in load_file(lora).items()}  # sd-scripts loads everything as float32
    with safe_open(lora, "pt") as f:
        meta = dict(f.metadata() or {})
    known = json.loads(Path(shape_times).read_text()) if sample and shape_times and Path(shape_times).exists() else {}
    out_sd, seen, extra, old_dim, new_alpha = dict(sd), {}, [0.0, 0.0], 0, None
    for key in list(sd):
        if not key.endswith("lora_down.weight"):
            continue
        base = key[: -len(".lora_down.weight")]
        down, up = sd[key], sd[base + ".lora_up.weight"]
        shape = str((tuple(down.shape), tuple(up.shape)))
        if sample and shape in known:
            seen.setdefault(shape, known[shape])
        if sample and shape in seen:
            extra[0] += seen[shape][0]
            extra[1] += seen[shape][1]
            continue
        t, c = time.perf_counter(), time.process_time()
        old_rank = down.shape[0]
        old_dim = max(old_dim, old_rank)
        scale = sd[base + ".alpha"] / old_rank if base + ".alpha" in sd else 1.0
        conv = down.ndim == 4
        w = up.reshape(up.shape[0], -1) @ down.reshape(old_rank, -1)
        u, s, vh = torch.linalg.svd(w)
        k = 1 if s[0] <= 1e-6 else new_rank
        s_sum, fro = s.abs().sum(), s.pow(2).sum().sqrt()
        _info = (s[:k].abs().sum() / s_sum, s[:k].pow(2).sum().sqrt() / fro, s[0] / s[k - 1])
        new_alpha = float(scale * k)
        u = u[:, :k] @ torch.diag(s[:k])
        vh = vh[:k]
        if conv:
            out_sd[key] = vh.reshape(k, *down.shape[1:]).half().contiguous()
            out_sd[base + ".lora_up.weight"] = u.reshape(up.shape[0], k, 1, 1).half().contiguous()
        else:
            out_sd[key] = vh.half().contiguous()
            out_sd[base + ".lora_up.weight"] = u.half().contiguous()
        out_sd[base + ".alpha"] = torch.tensor(new_alpha).half()
        seen[shape] = (time.perf_counter() - t, time.process_time() - c)
    meta["ss_training_comment"] = f"dimension is resized from {old_dim} to {new_rank}; "
    meta["ss_network_dim"], meta["ss_network_alpha"] = str(new_rank), str(new_alpha)
    out_sd = {k: v.half() if v.is_floating_point() else v for k, v in out_sd.items()}
    meta.update(_hashes(out_sd, meta))
    save_file(out_sd, out, meta)
    if sample and shape_times:
        Path(shape_times).write_text(json.dumps({**known, **seen}))
    return {"extrapolated_s": extra[0], "extrapolated_cpu_s": extra[1]}


def ref_qr(ckpt: str, lora: str, out_dir: str, weights: dict[str, float], thr: float, cache_file: str) -> dict:
    """The QR-based tool's algorithm: decompose each layer through QR, score against base norms, save."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from library.keys import checkpoint_targets, detect_family

    cache = json.loads(Path(cache_file).read_text()) if Path(cache_file).exists() else {}
    entry = cache.setdefault(str(Path(ckpt).resolve()), {"frobenius_norms": {}, "spectral_norms": {}})
    f = safe_open(ckpt, "pt")
    shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    targets = checkpoint_targets(shapes, detect_family(shapes))

    def base_weight(name: str) -> torch.Tensor:
        t = targets[name]
        w = f.get_tensor(t.key)
        if t.rows:
            w = w[t.rows[0]:t.rows[1]]
        return w.flatten(1).float()

    sd = load_file(lora)
    with safe_open(lora, "pt") as lf:
        meta = dict(lf.metadata() or {})
    out = {}
    for name in sorted(k[: -len(".lora_down.weight")] for k in sd if k.endswith(".lora_down.weight")):
        b = sd[f"{name}.lora_up.weight"].flatten(1).float()
        a = sd[f"{name}.lora_down.weight"].flatten(1).float()
        r = a.shape[0]
        alpha = float(sd[f"{name}.alpha"]) if f"{name}.alpha" in sd else r
        qb, rb = torch.linalg.qr(b)
        qa, ra = torch.linalg.qr(a.T)
        uc, s, vch = torch.linalg.svd(rb @ ra.T)
        u, vh, sigma = qb @ uc, vch @ qa.T, s * alpha / r
        if float(sigma[0]) < 1e-6 or name not in targets:
            continue
        scores = torch.log10(sigma)
        if weights.get("fro_ckpt"):
            if name not in entry["frobenius_norms"]:
                entry["frobenius_norms"][name] = float(torch.linalg.matrix_norm(base_weight(name)))
            scores -= weights["fro_ckpt"] * math.log10(entry["frobenius_norms"][name])
        if weights.get("spn_ckpt"):
            if name not in entry["spectral_norms"]:
                entry["spectral_norms"][name] = float(torch.svd_lowrank(base_weight(name), q=1, niter=64)[1][0])
            scores -= weights["spn_ckpt"] * math.log10(entry["spectral_norms"][name])
        keep = scores >= thr
        k = int(keep.sum())
        if not k:
            continue
        gain = torch.sqrt(sigma[keep] / (alpha / r))
        down_shape = sd[f"{name}.lora_down.weight"].shape[1:]
        up4 = sd[f"{name}.lora_up.weight"].ndim == 4
        out[f"{name}.lora_down.weight"] = (gain[:, None] * vh[keep]).reshape(k, *down_shape).half().contiguous()
        up = u[:, keep] * gain
        out[f"{name}.lora_up.weight"] = (up.reshape(*up.shape, 1, 1) if up4 else up).half().contiguous()
        out[f"{name}.alpha"] = torch.tensor(alpha / r * k).half()
    meta["resize_params"] = json.dumps({"weights": weights, "threshold": thr})
    meta.update(_hashes(out, meta))
    save_file(out, str(Path(out_dir) / (Path(lora).stem + "_qrref.safetensors")), meta)
    Path(cache_file).write_text(json.dumps(cache))
    return {}


# ---- child process: one subject, timed --------------------------------------------------------------------

def child(subject: str, args: dict) -> None:
    import resource

    import torch

    torch.set_num_threads(args["cores"])
    from library.cli import run_main
    from networks.resize_lora import main

    t0, c0 = time.perf_counter(), time.process_time()
    info = {}
    if subject == "ours-kohya":
        assert run_main(main, ["--model", args["lora"], "--save_to", args["out"], "--new_rank", str(args["rank"]),
                               "--new_conv_rank", str(args["rank"]), "--save_precision", "fp16"]) == 0
    elif subject == "sd-scripts":
        info = ref_sdscripts(args["lora"], args["out"], args["rank"], args["sample"], args.get("shape_times"))
    elif subject == "ours-aware":
        assert run_main(main, [args["ckpt"], args["lora"], "-o", args["out_dir"], "-r", args["recipe"],
                               "--cache_dir", args["cache"]]) == 0
    elif subject == "qr-ref":
        weights = {k: float(v) for k, v in (item.split("=") for item in args["recipe"].split(",")) if k != "thr"}
        ref_qr(args["ckpt"], args["lora"], args["out_dir"], weights, float(args["recipe"].split("thr=")[1]),
               args["cache"])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"wall_s": wall + info.get("extrapolated_s", 0.0),
                                  "cpu_s": cpu + info.get("extrapolated_cpu_s", 0.0), "rss_mib": rss,
                                  "extrapolated": bool(info.get("extrapolated_s"))}))


def warm_page_cache(*paths: str) -> None:
    """Read the inputs once so every subject starts with them in the page cache (same footing for all)."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


def measure(subject: str, cores: int, repeat: int = 1, fresh: Path | None = None, **kwargs) -> dict:  # noqa: ANN003
    """Median wall and CPU time over `repeat` runs (removing `fresh`, a cache, before each), max peak RSS."""
    runs = []
    for _ in range(repeat):
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True) if fresh.is_dir() else fresh.unlink(missing_ok=True)
        runs.append(_measure_once(subject, cores, **kwargs))
    return {"wall_s": statistics.median(r["wall_s"] for r in runs), "cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "rss_mib": max(r["rss_mib"] for r in runs), "extrapolated": runs[0]["extrapolated"]}


def _measure_once(subject: str, cores: int, **kwargs) -> dict:  # noqa: ANN003 - forwarded to the child
    warm_page_cache(*(kwargs[k] for k in ("ckpt", "lora") if k in kwargs))
    env = dict(os.environ, OMP_NUM_THREADS=str(cores), MKL_NUM_THREADS=str(cores), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, __file__, "--child", subject, json.dumps({"cores": cores, **kwargs})]
    pin = ["taskset", "-c", ",".join(str(c) for c in range(cores))] if shutil.which("taskset") else []
    res = subprocess.run(pin + cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if res.returncode or line is None:
        raise SystemExit(f"{subject} failed:\n{res.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def fmt(r: dict) -> str:
    return f"{'~' if r.get('extrapolated') else ''}{r['wall_s']:.1f} s ({r['cpu_s']:.1f} cpu) / {r['rss_mib']:.0f} MiB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=["sd1", "sdxl"])
    p.add_argument("--ranks", nargs="+", type=int, default=[32, 128])
    p.add_argument("--kinds", nargs="+", default=["lora", "locon"])
    p.add_argument("--cores", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3, help="runs per subject (median); sd-scripts and spn runs: once")
    p.add_argument("--full-ref", nargs="*", default=[], help="cases (e.g. sd1-r32-lora) where sd-scripts runs fully")
    p.add_argument("--no-sd-scripts", action="store_true", help="skip the sd-scripts reference")
    p.add_argument("--recipe", default=RECIPE, help=f"recipe of the aware comparisons [{RECIPE}]")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("args", nargs="?", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, json.loads(a.args))
        return
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for family in a.families:
        ckpt = a.out / f"{family}-real-fp16.safetensors"
        if not ckpt.exists():
            t = time.perf_counter()
            write_checkpoint(ckpt, family)
            print(f"wrote {ckpt} ({ckpt.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t:.0f} s", flush=True)
        for rank in a.ranks:
            for kind in a.kinds:
                case = f"{family}-r{rank}-{kind}"
                lora = a.out / f"{case}.safetensors"
                if not lora.exists():
                    write_lora(lora, ckpt, rank, kind == "locon")
                work = a.out / case
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir()
                common = dict(lora=str(lora), ckpt=str(ckpt), out_dir=str(work))
                r = {"case": case, "size": f"{lora.stat().st_size / 2**20:.0f} MiB"}
                n = a.repeat
                r["ours-kohya"] = measure("ours-kohya", a.cores, n, out=str(work / "k.safetensors"), rank=rank // 4,
                                          **common)
                if not a.no_sd_scripts:
                    r["sd-scripts"] = measure("sd-scripts", a.cores, 1, out=str(work / "ref.safetensors"), rank=rank // 4,
                                              sample=case not in a.full_ref,
                                              shape_times=str(a.out / f"sdscripts_shape_times_{a.cores}core.json"),
                                              **common)
                cache, qr_cache = work / "cache", work / "qr_cache.json"
                r["ours-aware cold"] = measure("ours-aware", a.cores, n, cache, recipe=a.recipe, cache=str(cache), **common)
                r["qr-ref cold"] = measure("qr-ref", a.cores, n, qr_cache, recipe=a.recipe, cache=str(qr_cache), **common)
                r["ours-aware warm"] = measure("ours-aware", a.cores, n, recipe=a.recipe, cache=str(cache), **common)
                r["qr-ref warm"] = measure("qr-ref", a.cores, n, recipe=a.recipe, cache=str(qr_cache), **common)
                if rank == a.ranks[0] and kind == a.kinds[0]:  # norm cost depends on the checkpoint only
                    r["ours spn cold"] = measure("ours-aware", a.cores, 1, cache, recipe=SPN_RECIPE, cache=str(cache),
                                                 **common)
                    r["qr-ref spn cold"] = measure("qr-ref", a.cores, 1, qr_cache, recipe=SPN_RECIPE,
                                                   cache=str(qr_cache), **common)
                rows.append(r)
                print(json.dumps(r), flush=True)
                shutil.rmtree(work, ignore_errors=True)
    cols = ["case", "size", "ours-kohya", *([] if a.no_sd_scripts else ["sd-scripts"]), "ours-aware cold", "qr-ref cold", "ours-aware warm",
            "qr-ref warm", "ours spn cold", "qr-ref spn cold"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(r[c] if isinstance(r[c], str) else fmt(r[c]) if c in r else "-" for c in cols)
                     + " |")
    lines.append("")
    def ratio(r: dict, ref: str, ours: str) -> str:
        return f"{r[ref]['wall_s'] / r[ours]['wall_s']:.1f}x ({r[ref]['cpu_s'] / r[ours]['cpu_s']:.1f}x cpu)"

    lines.insert(0, f"cores: {a.cores}, aware recipe: {a.recipe}, median of {a.repeat} runs\n")
    lines.append("speed-up, reference time / ours (wall, and CPU):")
    for r in rows:
        pairs = [("sd-scripts", "sd-scripts", "ours-kohya"), ("qr-ref cold", "qr-ref cold", "ours-aware cold"),
                 ("qr-ref warm", "qr-ref warm", "ours-aware warm"), ("spn cold", "qr-ref spn cold", "ours spn cold")]
        lines.append(f"- {r['case']}: " + ", ".join(f"{label} {ratio(r, ref, ours)}" for label, ref, ours in pairs
                                                      if ref in r))
    text = "\n".join(lines)
    print(text)
    with open(a.out / "resize_results.md", "a") as f:
        f.write(text + "\n\n")


if __name__ == "__main__":
    main()

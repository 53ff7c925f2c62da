"""Benchmark the merge and extract tools on real-shape SD1.5 random checkpoints and LoRAs.

    python bench/lora_tools.py [--workdir /tmp/lora_bench] [--only merge,concat,svd,extract] [--no_reference]

Inputs (made once, seeded): an SD1.5-shape checkpoint in fp16 (~2 GB), LoCon LoRAs of rank 32 (conv 16) and
rank 128 (conv 32), and a "tuned" checkpoint = base + the rank-128 LoRA (fp16, so the difference also carries
rounding noise). Every run is a fresh subprocess; wall time and peak RSS (ru_maxrss) are its own.

"reference (sd-scripts algorithm)" rows are re-implementations of sd-scripts' documented algorithms inside this
file (sd-scripts itself cannot be installed here): merge = load the whole model into Diffusers/transformers
objects in float32, add each ΔW to its module, convert back and save; svd_merge = form each dense ΔW, exact
torch.linalg.svd; extract = load both models in float32, keep every difference, exact torch.linalg.svd per module.
sd-scripts calls torch.linalg.svd with full_matrices=True; the reference uses full_matrices=False, which gives
the same factors faster, so the speed-ups reported here are conservative.
Error columns are relative Frobenius errors over all modules: svd_merge against the exact weighted sum of the
inputs, extract against tuned − base. Clamping is off on both sides so errors measure the decompositions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RATIOS = ("0.8", "0.5")
NEW_RANK, NEW_CONV_RANK = "64", "32"
DIM = "32"
CONV_DIM: str | None = None  # --extract_conv_dim: the reference's full SVDs of 3x3 convs take many minutes


def input_paths(work: Path) -> dict[str, Path]:
    return {"base": work / "sd15-fp16.safetensors", "lora32": work / "locon-r32.safetensors",
            "lora128": work / "locon-r128.safetensors", "tuned": work / "tuned-fp16.safetensors"}


def prepare(work: Path, size: str = "real") -> dict[str, Path]:
    """Seeded inputs, written once into `work`."""
    import torch

    from library.lora_io import modules_to_state_dict, save_lora
    from library.lora_sources import open_sources
    from library.merge import merge_into_checkpoint
    from library.models.factory import write_random_checkpoint
    from library.random_lora import random_lora

    work.mkdir(parents=True, exist_ok=True)
    p = input_paths(work)
    if not p["base"].exists():
        print("writing", p["base"], flush=True)
        write_random_checkpoint(p["base"], "sd1", size=size, seed=0, dtype=torch.float16)
    meta = {"ss_base_model_version": "sd_v1", "ss_v2": "False"}
    for key, rank, conv, seed in (("lora32", 32, 16, 1), ("lora128", 128, 32, 2)):
        if not p[key].exists():
            print("writing", p[key], flush=True)
            mods = random_lora(p["base"], rank=rank, alpha=rank / 2, conv_rank=conv, conv_alpha=conv / 2, seed=seed,
                               std=0.02)
            save_lora(p[key], modules_to_state_dict(mods), meta, torch.float16)
    if not p["tuned"].exists():
        print("writing", p["tuned"], flush=True)
        merge_into_checkpoint(p["base"], open_sources([str(p["lora128"])], [1.0]), p["tuned"],
                              save_dtype=torch.float16)
    return p


# ----------------------------------------------------------------------------------------------------------------
# reference (sd-scripts algorithm) implementations
# ----------------------------------------------------------------------------------------------------------------

def _module_table(bundle) -> dict:  # noqa: ANN001
    """kohya name -> torch module of a loaded model (sd-scripts' LoRA target map, C3Lier included)."""
    import torch

    from library.keys import layout_from_config, te_lora_name, unet_lora_name

    table = {}
    layout = layout_from_config(bundle.unet.config)
    for name, mod in bundle.unet.named_modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            table[unet_lora_name(name, layout)] = mod
    for name, mod in bundle.text_encoders[0].named_modules():
        if isinstance(mod, torch.nn.Linear):
            table[te_lora_name("lora_te", name)] = mod
    return table


def ref_merge(base: str, loras: list[str], ratios: list[float], out: str) -> None:
    import torch

    from library.files import save_state_dict
    from library.lora_io import load_lora, split_modules
    from library.models import load_models, to_original_state_dict

    bundle = load_models(base, dtype=torch.float32)
    table = _module_table(bundle)
    with torch.no_grad():
        for path, ratio in zip(loras, ratios):
            sd, _ = load_lora(path)
            for name, f in split_modules(sd).items():
                mod = table[name]
                mod.weight += ratio * f.delta().reshape(mod.weight.shape)
    sd = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in to_original_state_dict(bundle).items()}
    save_state_dict(sd, out)


def ref_concat(loras: list[str], ratios: list[float], out: str) -> None:
    import torch

    from library.lora_io import LoRAFactors, load_lora, modules_to_state_dict, save_lora, split_modules

    inputs = [split_modules(load_lora(p)[0]) for p in loras]
    merged = {}
    for name in inputs[0]:
        base_alpha = inputs[0][name].alpha
        downs, ups = [], []
        for mods, r in zip(inputs, ratios):
            f = mods[name]
            s = (f.alpha / base_alpha) ** 0.5 * r
            downs.append(f.down.float() * s)
            ups.append(f.up.float() * abs(s))
        merged[name] = LoRAFactors(torch.cat(downs), torch.cat(ups, dim=1), base_alpha)
    save_lora(out, modules_to_state_dict(merged), {}, torch.float16)


def ref_svd_merge(loras: list[str], ratios: list[float], new_rank: int, new_conv_rank: int, out: str) -> None:
    import torch

    from library.lora_io import LoRAFactors, load_lora, modules_to_state_dict, save_lora, split_modules

    inputs = [split_modules(load_lora(p)[0]) for p in loras]
    merged = {}
    for name in inputs[0]:
        delta = sum(r * m[name].delta() for m, r in zip(inputs, ratios))
        conv = delta.ndim == 4 and delta.shape[2:] != (1, 1)
        mat = delta.flatten(1)
        k = min(new_conv_rank if conv else new_rank, delta.shape[0], delta.shape[1])
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)  # sd-scripts: full_matrices=True (slower still)
        up, down = u[:, :k] @ torch.diag(s[:k]), vh[:k]
        if delta.ndim == 4:
            up, down = up.reshape(*up.shape, 1, 1), down.reshape(k, *delta.shape[1:])
        merged[name] = LoRAFactors(down, up, float(k))
    save_lora(out, modules_to_state_dict(merged), {}, torch.float16)


def ref_extract(org: str, tuned: str, dim: int, conv_dim: int | None, out: str) -> None:
    import torch

    from library.lora_io import LoRAFactors, modules_to_state_dict, save_lora
    from library.models import load_models

    mods_o = _module_table(load_models(org, dtype=torch.float32))
    mods_t = _module_table(load_models(tuned, dtype=torch.float32))
    diffs = {}
    for name, mo in mods_o.items():
        if name in _targets(org, conv_dim):
            diffs[name] = (mods_t[name].weight - mo.weight).detach().float()
    merged = {}
    for name, delta in diffs.items():
        conv = delta.ndim == 4 and delta.shape[2:] != (1, 1)
        mat = delta.flatten(1)
        k = min(conv_dim if conv else dim, delta.shape[0], delta.shape[1])
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)  # sd-scripts: full_matrices=True (slower still)
        up, down = u[:, :k] @ torch.diag(s[:k]), vh[:k]
        if delta.ndim == 4:
            up, down = up.reshape(*up.shape, 1, 1), down.reshape(k, *delta.shape[1:])
        merged[name] = LoRAFactors(down, up, float(k))
    save_lora(out, modules_to_state_dict(merged), {})


_TARGETS: dict = {}


def _targets(ckpt: str, conv_dim: int | None) -> set[str]:
    """The module names extraction covers (same rule in both implementations)."""
    if ckpt not in _TARGETS:
        from library.extract import select_targets
        from library.files import load_state_dict
        from library.merge import tensor_shapes

        tensors, _ = load_state_dict(ckpt, lazy=True)
        _TARGETS[ckpt] = set(select_targets(tensor_shapes(tensors), "sd1", conv_dim))
    return _TARGETS[ckpt]


# ----------------------------------------------------------------------------------------------------------------
# error measures (not timed)
# ----------------------------------------------------------------------------------------------------------------

def svd_merge_error(loras: list[str], ratios: list[float], merged: str) -> float:
    import torch

    from library.lora_io import load_lora, split_modules

    inputs = [split_modules(load_lora(p)[0]) for p in loras]
    out = split_modules(load_lora(merged)[0])
    num = den = 0.0
    for name, f in out.items():
        want = sum(r * m[name].delta() for m, r in zip(inputs, ratios) if name in m)
        num += float((f.delta(torch.float32).reshape(want.shape) - want).norm() ** 2)
        den += float(want.norm() ** 2)
    return (num / den) ** 0.5


def extract_error(org: str, tuned: str, lora: str) -> float:
    from library.extract import iter_deltas, select_targets
    from library.files import open_streaming
    from library.lora_io import load_lora, split_modules
    from library.merge import tensor_shapes

    o, _ = open_streaming(org)
    t, _ = open_streaming(tuned)
    targets = select_targets(tensor_shapes(o), "sd1", int(CONV_DIM) if CONV_DIM else None)
    mods = split_modules(load_lora(lora)[0])
    num = den = 0.0
    for name, d in iter_deltas(o, t, {n: targets[n] for n in mods}):
        f = mods[name]
        num += float((f.delta().reshape(d.shape) - d).norm() ** 2)
        den += float(d.norm() ** 2)
    return (num / den) ** 0.5


# ----------------------------------------------------------------------------------------------------------------
# runs
# ----------------------------------------------------------------------------------------------------------------

def jobs(p: dict[str, Path], work: Path) -> list[tuple[str, str, dict]]:
    loras = [str(p["lora32"]), str(p["lora128"])]
    ratio_args = ["--ratios", *RATIOS]
    return [
        ("merge into model", "ours", {"script": "merge_lora", "argv": [
            "--sd_model", str(p["base"]), "--save_to", str(work / "out-merge.safetensors"), "--models", *loras,
            *ratio_args, "--save_precision", "fp16"]}),
        ("merge into model", "reference", {"ref": "merge", "args": [str(p["base"]), loras, [0.8, 0.5],
                                                                    str(work / "ref-merge.safetensors")]}),
        ("LoRA+LoRA concat", "ours", {"script": "merge_lora", "argv": [
            "--save_to", str(work / "out-concat.safetensors"), "--models", *loras, *ratio_args, "--concat",
            "--save_precision", "fp16"]}),
        ("LoRA+LoRA concat", "reference", {"ref": "concat", "args": [loras, [0.8, 0.5],
                                                                     str(work / "ref-concat.safetensors")]}),
        ("svd_merge", "ours", {"script": "svd_merge_lora", "argv": [
            "--save_to", str(work / "out-svd.safetensors"), "--models", *loras, *ratio_args,
            "--new_rank", NEW_RANK, "--new_conv_rank", NEW_CONV_RANK]}),
        ("svd_merge", "reference", {"ref": "svd", "args": [loras, [0.8, 0.5], int(NEW_RANK), int(NEW_CONV_RANK),
                                                           str(work / "ref-svd.safetensors")]}),
        ("extract", "ours", {"script": "extract_lora_from_models", "argv": [
            "--model_org", str(p["base"]), "--model_tuned", str(p["tuned"]), "--save_to",
            str(work / "out-extract.safetensors"), "--dim", DIM, *(["--conv_dim", CONV_DIM] if CONV_DIM else []),
            "--clamp_quantile", "1"]}),
        ("extract", "reference", {"ref": "extract", "args": [str(p["base"]), str(p["tuned"]), int(DIM),
                                                             int(CONV_DIM or 0) or None,
                                                             str(work / "ref-extract.safetensors")]}),
    ]


def child(spec: dict) -> None:
    """Run one job in this (fresh) process and print its wall time and peak RSS as JSON."""
    import importlib

    from library.cli import run_main

    if "script" in spec:  # imports are not timed, on either side
        module = importlib.import_module(f"networks.{spec['script']}")
    else:
        import library.models  # noqa: F401 - the reference loads Diffusers models
    start = time.perf_counter()
    if "script" in spec:
        rc = run_main(module.main, spec["argv"])
        if rc:
            raise SystemExit(rc)
    else:
        fn = {"merge": ref_merge, "concat": ref_concat, "svd": ref_svd_merge, "extract": ref_extract}[spec["ref"]]
        fn(*spec["args"])
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"wall_s": wall, "peak_rss_mb": rss}))


def measure(spec: dict) -> dict:
    env = dict(os.environ, TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"job failed (exit {proc.returncode}): {spec}\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/lora_bench")
    parser.add_argument("--only", default="merge,concat,svd,extract")
    parser.add_argument("--no_reference", action="store_true")
    parser.add_argument("--only_reference", action="store_true")
    parser.add_argument("--extract_conv_dim", default=None, help="also extract 3x3 convs at this rank")
    parser.add_argument("--size", default="real", choices=["real", "tiny"], help="tiny: a quick check of the script")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global CONV_DIM
    CONV_DIM = args.extract_conv_dim
    if args.child:
        child(json.loads(args.child))
        return
    if args.prepare:
        prepare(Path(args.workdir), args.prepare)
        return
    work = Path(args.workdir)
    # the inputs are made in a child process: ru_maxrss survives fork+exec, so this process must stay small
    subprocess.run([sys.executable, __file__, "--prepare", args.size, "--workdir", str(work)], check=True, cwd=ROOT,
                   env=dict(os.environ, TQDM_DISABLE="1"))
    p = input_paths(work)
    wanted = {"merge": "merge into model", "concat": "LoRA+LoRA concat", "svd": "svd_merge", "extract": "extract"}
    keep = {wanted[w] for w in args.only.split(",")}
    print(f"load average at start: {os.getloadavg()}, cpus: {os.cpu_count()}", flush=True)
    print(f"base checkpoint: {p['base'].stat().st_size / 2**20:.0f} MiB; LoRAs: "
          f"{p['lora32'].stat().st_size / 2**20:.0f} MiB (r32), {p['lora128'].stat().st_size / 2**20:.0f} MiB (r128)")
    results = {}
    for tool, impl, spec in jobs(p, work):
        if tool not in keep or (impl == "reference" and args.no_reference) or (impl == "ours" and args.only_reference):
            continue
        try:
            r = measure(spec)
        except RuntimeError as e:  # e.g. killed for memory on a shared machine: report it and go on
            print(f"{tool:18} {impl:10} FAILED: {str(e).splitlines()[0]}", flush=True)
            continue
        results[(tool, impl)] = r
        print(f"{tool:18} {impl:10} wall {r['wall_s']:8.1f} s   peak RSS {r['peak_rss_mb']:8.0f} MiB", flush=True)
    loras = [str(p["lora32"]), str(p["lora128"])]
    if "svd_merge" in keep:
        for impl, f in (("ours", "out-svd"), ("reference", "ref-svd")):
            if (work / f"{f}.safetensors").exists() and ("svd_merge", impl) in results:
                results[("svd_merge", impl)]["error"] = svd_merge_error(loras, [0.8, 0.5], str(work / f"{f}.safetensors"))
    if "extract" in keep:
        for impl, f in (("ours", "out-extract"), ("reference", "ref-extract")):
            if (work / f"{f}.safetensors").exists() and ("extract", impl) in results:
                results[("extract", impl)]["error"] = extract_error(str(p["base"]), str(p["tuned"]),
                                                                    str(work / f"{f}.safetensors"))
    size_mb = p["base"].stat().st_size / 2**20
    print("\n| tool | implementation | wall s | peak RSS MiB | RSS / checkpoint | rel. error |")
    print("|---|---|---|---|---|---|")
    for (tool, impl), r in results.items():
        err = f"{r['error']:.5f}" if "error" in r else ""
        print(f"| {tool} | {impl} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / size_mb:.2f} | {err} |")
    for tool in keep:
        if (tool, "ours") in results and (tool, "reference") in results:
            o, ref = results[(tool, "ours")], results[(tool, "reference")]
            line = f"{tool}: {ref['wall_s'] / o['wall_s']:.1f}x faster, RSS {o['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x"
            if "error" in o and "error" in ref:
                line += f", error ratio ours/reference {o['error'] / ref['error']:.4f}"
            print(line)


if __name__ == "__main__":
    main()

"""Resize a real-shape SDXL LoKr to a rank-16 LoRA with resize_lora.py (no peer tool can): seconds and peak RSS.

    python bench/lokr_resize.py [--factor 8] [--dim 16] [--new_rank 16] [--cores 1]

The LoKr is random (seeded) on every U-Net attention and feed-forward Linear of SDXL (to_q/k/v/out, ff), with
LyCORIS' layout for `factor`/`dim` (W1 full, W2 = w2_a·w2_b). Shapes come from the real SDXL config on the meta
device: no checkpoint is needed. The resize runs in its own process pinned to --cores threads; the figure is
its wall time (imports included) and peak RSS. Also printed: the file's size, modules, and the mean share of
each module's ‖ΔW‖ the rank-16 LoRA keeps.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--factor", type=int, default=8)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--new_rank", type=int, default=16)
    p.add_argument("--cores", type=int, default=1)
    args = p.parse_args()
    import torch

    from bench.resize import original_shapes
    from library.adapters import delta_weight, group_modules
    from library.files import load_state_dict
    from library.lora_io import save_lora
    from library.random_lora import random_lycoris

    sd = random_lycoris(original_shapes("sdxl"), "lokr", args.dim, alpha=args.dim / 2, factor=args.factor,
                        te=False, only=r"_(attn[12]_to_(q|k|v|out_0)|ff_net_(0_proj|2))$", std=0.02)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "lokr.safetensors", Path(tmp) / "lora16.safetensors"
        save_lora(src, sd, {"ss_network_module": "lycoris.kohya", "ss_base_model_version": "sdxl_base_v1-0"})
        env = {**os.environ, "OMP_NUM_THREADS": str(args.cores), "MKL_NUM_THREADS": str(args.cores)}
        cmd = [sys.executable, str(ROOT / "networks" / "resize_lora.py"), "--model", str(src), "--save_to", str(out),
               "--new_rank", str(args.new_rank), "--save_precision", "fp16"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        size = src.stat().st_size / 2**20
        res, lokr = group_modules(load_state_dict(out)[0]), group_modules(sd)
        kept = []
        for i, name in enumerate(sorted(lokr)):
            if i % 20:  # every 20th module: dense ΔW of the big layers is costly
                continue
            want = delta_weight(lokr[name], dtype=torch.float64)
            got = delta_weight(res[name], dtype=torch.float64).reshape(want.shape)
            kept.append(1 - float((got - want).norm() / want.norm()) ** 2)
    print(f"SDXL LoKr factor {args.factor} dim {args.dim}: {len(lokr)} modules, {size:.0f} MiB -> rank-{args.new_rank} "
          f"LoRA: {seconds:.1f} s, peak RSS {rss:.0f} MiB ({args.cores} thread(s)); "
          f"share of ‖ΔW‖² kept: mean {sum(kept) / len(kept):.3f} over {len(kept)} sampled modules")


if __name__ == "__main__":
    main()

"""Load time and peak RSS of a real-shape random checkpoint (SD1.5 or SDXL shapes), single file, fp16 on disk.

    python bench/load_models.py [--family sd1|sdxl] [--out bench/out]

Each measurement runs in a fresh subprocess so peak RSS (ru_maxrss) belongs to that step alone.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _child(path: str) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from library.models import load_models

    t = time.perf_counter()
    bundle = load_models(path, dtype=torch.float32)
    elapsed = time.perf_counter() - t
    params = sum(p.numel() for m in (bundle.unet, bundle.vae, *bundle.text_encoders) for p in m.parameters())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"load {Path(path).name}: {elapsed:.1f} s, {params / 1e9:.2f} B params "
          f"({params * 4 / 2**30:.2f} GiB fp32), peak RSS {rss:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family", default="sd1", choices=["sd1", "sd2", "sdxl"])
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return
    path = Path(args.out) / f"real-{args.family}-fp16.safetensors"
    if not path.exists():
        sys.path.insert(0, str(ROOT))
        import torch

        from library.models.factory import write_random_checkpoint

        t = time.perf_counter()
        write_random_checkpoint(path, args.family, "real", 0, torch.float16)
        print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t:.0f} s")
    subprocess.run([sys.executable, __file__, "--child", str(path)], check=True)


if __name__ == "__main__":
    main()

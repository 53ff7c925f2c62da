"""finetune/prepare_buckets_latents.py side by side with sd-scripts' own, on the same real-shape SD1.5 checkpoint
and images, each run in its own process, alternating; then each toolkit reads the other's output.

    python bench/finetune_prepare.py --peers $PEERS [--runs 2] [--images 16]

Images: the procedural sample set with mixed aspect ratios at 256 px (bench/out/, written once), captions merged by
this toolkit's merge_captions_to_metadata.py. Both tools get `--max_resolution 256,256 --min_bucket_reso 128
--max_bucket_reso 512 --batch_size 4 --flip_aug`. Printed: median whole-process wall time and peak RSS per tool,
the number of `.npz` files each wrote, whether both chose the same `train_resolution` for every image, and whether
sd-scripts accepts this toolkit's `.npz` files (its own is_disk_cached_latents_is_expected) and this toolkit
accepts sd-scripts' (load_npz). (Some sd-scripts snapshots write no `.npz` here: their `cache_batch_latents`
has the disk write commented out; the count shows it.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
OUT = ROOT / "bench" / "out"
TOOL_ARGS = ["--max_resolution", "256,256", "--min_bucket_reso", "128", "--max_bucket_reso", "512",
             "--batch_size", "4", "--flip_aug"]
PEER_CHECK = """
import json, sys
sys.path.insert(0, '.')
from library import train_util
meta = json.load(open(sys.argv[1]))
ok = [train_util.is_disk_cached_latents_is_expected(tuple(e['train_resolution']), sys.argv[2] + '/' + k + '.npz',
                                                    True, False) for k, e in meta.items()]
print(sum(ok), len(ok))
"""


def run(cmd: list[str], cwd: Path | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{cmd[:2]} failed:\n{output.decode(errors='replace')[-3000:]}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def dataset(n: int) -> Path:
    """A flat folder of n captioned images of mixed aspect ratios and its merged captions (meta_cap.json)."""
    from library.sample_data import make_sample_dataset

    folder = OUT / f"ft{n}"
    if not (folder / "meta_cap.json").exists():
        src = make_sample_dataset(OUT / f"ft{n}-src", num_images=n, resolution=256, seed=0, aspect_ratios=True)
        shutil.copytree(next(src.iterdir()), folder / "images")
        run([sys.executable, str(ROOT / "finetune" / "merge_captions_to_metadata.py"), str(folder / "images"),
             str(folder / "meta_cap.json")])
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", required=True, type=Path, help="folder set up by setup_sd_scripts.sh")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    from train_speed import prepare_in_child

    ckpt, _ = prepare_in_child("real", "sd1", 256)
    folder = dataset(args.images)
    images, cap = folder / "images", folder / "meta_cap.json"
    sides = {
        "ours": ([sys.executable, str(ROOT / "finetune" / "prepare_buckets_latents.py")], None),
        "sd-scripts": ([str(args.peers / "venv" / "bin" / "python"), "finetune/prepare_buckets_latents.py"],
                       args.peers / "sd-scripts"),
    }
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
    metas = {}
    for _ in range(args.runs):
        for name, (cmd, cwd) in sides.items():
            for p in images.glob("*.npz"):
                p.unlink()
            out = folder / f"meta_lat_{name}.json"
            load = os.getloadavg()[0]
            results[name].append(run([*cmd, str(images), str(cap), str(out), str(ckpt), *TOOL_ARGS], cwd))
            written = len(list(images.glob("*.npz")))
            print(f"{name}: {results[name][-1][0]:.1f} s, {results[name][-1][1]:.0f} MiB, {written} .npz written "
                  f"(load {load:.1f})", flush=True)
            metas[name] = json.loads(out.read_text())
            shutil.copytree(images, folder / f"npz_{name}", dirs_exist_ok=True)
    for name, rows in results.items():
        print(f"{name:>10}: median wall {statistics.median(r[0] for r in rows):.1f} s, "
              f"peak RSS {statistics.median(r[1] for r in rows):.0f} MiB over {len(rows)} runs")
    same = all(metas["ours"][k]["train_resolution"] == metas["sd-scripts"][k]["train_resolution"]
               for k in metas["ours"])
    print(f"same train_resolution for all {len(metas['ours'])} images: {same}; buckets: "
          f"{sorted({tuple(e['train_resolution']) for e in metas['ours'].values()})}")
    peer = subprocess.run([str(args.peers / "venv" / "bin" / "python"), "-c", PEER_CHECK,
                           str(folder / "meta_lat_ours.json"), str(folder / "npz_ours")],
                          cwd=args.peers / "sd-scripts", capture_output=True, text=True)
    print(f"sd-scripts accepts this toolkit's .npz: {peer.stdout.strip()} (accepted, total)")
    from library.data.latents import load_npz

    ok = sum(load_npz(folder / "npz_sd-scripts" / f"{k}.npz", tuple(e["train_resolution"]), True) is not None
             for k, e in metas["sd-scripts"].items())
    print(f"this toolkit accepts sd-scripts' .npz: {ok} {len(metas['sd-scripts'])} (accepted, total)")


if __name__ == "__main__":
    main()

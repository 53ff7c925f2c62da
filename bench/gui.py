"""The web UI's costs: seconds from `python gui.py` to the first page served, and seconds per step of the quickstart
started from the page against the same run from the command line.

The page's Start runs `library.gui.runs_tab.start_run` (the Train tab's fields -> the script's own parser -> the run
manager, which starts `train_network.py` in its own process); this benchmark calls exactly that with the quickstart
preloaded as the page opens, without a browser. Both runs write `--progress_jsonl`; s/step is the median step
interval after the first `--skip` steps. Same process path, so the two should agree within noise.

    python bench/gui.py                    # startup, then 40 steps each way
    python bench/gui.py --steps 80 --skip 10
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def startup_seconds(out: Path) -> float:
    """From starting `python gui.py` to the first 200 on the page's URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "gui.py", "--port", str(port), "--output_root", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    if r.status == 200 and r.read():
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.1)
            if proc.poll() is not None:
                raise SystemExit(f"gui.py exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def step_seconds(feed: Path, skip: int) -> float:
    times = [e["time"] for e in map(json.loads, feed.read_text().splitlines()) if e["event"] == "step"]
    gaps = [b - a for a, b in zip(times[skip:], times[skip + 1:])]
    return statistics.median(gaps)


def quickstart_argv(out: Path, steps: int) -> tuple:
    """The Train tab (quickstart loaded) and its field values redirected to `out`, `steps` steps, no samples."""
    import gradio as gr

    from library.gui.app import make_context
    from library.gui.train_tab import build_train_tab

    with gr.Blocks():
        ui = build_train_tab(make_context(out / "ui"))
    values = [c.value for c in ui.inputs()]
    form = ui.form
    for name, value in (("output_dir", str(out / "page")), ("max_train_epochs", ""), ("max_train_steps", str(steps)),
                        ("save_every_n_epochs", ""), ("sample_every_n_epochs", ""), ("sample_prompts", ""),
                        ("logging_dir", "")):
        values[ui.inputs().index(form.fields[name].component)] = value
    values[ui.inputs().index(form.fields["sample_at_first"].component)] = False
    return ui, values


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip", type=int, default=5, help="steps left out of the timing (warm-up)")
    args = p.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-gui-"))
    print(f"python gui.py -> first page served: {startup_seconds(out / 'startup'):.1f} s")

    from library.gui.runs_tab import start_run

    ui, values = quickstart_argv(out, args.steps)
    run = start_run(ui.ctx, ui, values)
    ui.ctx.runs.wait(run.id, timeout=3600)
    page = step_seconds(ui.ctx.runs.folder(run.id) / "progress.jsonl", args.skip)
    cli_feed = out / "cli.jsonl"
    subprocess.run([sys.executable, "train_network.py", *run.argv, "--output_dir", str(out / "cli"),
                    "--progress_jsonl", str(cli_feed)], cwd=ROOT, check=True, capture_output=True,
                   env={**os.environ})
    cli = step_seconds(cli_feed, args.skip)
    print(f"quickstart, {args.steps} steps (median after {args.skip}): page {page:.3f} s/step, "
          f"command line {cli:.3f} s/step ({(page / cli - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()

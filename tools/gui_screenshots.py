"""Screenshots of the web UI for docs/gui.md, taken in a real browser (Debian's chromium through playwright):
the Train tab with the quickstart loaded, and the Runs tab during a short quickstart run (loss chart, the base
model's step-0 samples beside the first epoch's).

    python tools/gui_screenshots.py                 # writes docs/images/gui_train.png, docs/images/gui_runs.png
    python tools/gui_screenshots.py --chromium /usr/bin/chromium
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chromium", default="/usr/bin/chromium", help="browser executable [/usr/bin/chromium]")
    p.add_argument("--out", default=str(ROOT / "docs" / "images"), help="folder of the pictures [docs/images]")
    return p.parse_args()


def _fill(page, script: str, name: str, value: str) -> None:  # noqa: ANN001
    from library.gui.forms import elem_id
    from library.options.train import train_options

    box = page.locator(f"#{elem_id(script, name)} input, #{elem_id(script, name)} textarea").first
    if not box.count():  # a closed group: gradio renders its fields once opened
        group = next(o.group for o in train_options(script) if o.name == name)
        page.locator(f"#{elem_id(script, group, 'grp')}").locator("button").first.click()
    page.locator(f"#{elem_id(script, name)} input, #{elem_id(script, name)} textarea").first.fill(value)


def main() -> None:
    args = parse_args()
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT))
    work = Path(tempfile.mkdtemp(prefix="gui-shots-"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "gui.py", "--port", str(port), "--output_root", str(work / "ui")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = server.stdout.readline().split()[-1]
    out = Path(args.out)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
            page.goto(url)
            page.wait_for_selector("#start-training", timeout=120_000)
            page.wait_for_timeout(3000)
            page.screenshot(path=str(out / "gui_train.png"))
            for name, value in (("output_dir", str(work / "run")), ("max_train_epochs", "2"),
                                ("save_every_n_epochs", "1"), ("sample_every_n_epochs", "1"),
                                ("logging_dir", "")):
                _fill(page, "train_network", name, value)
            page.wait_for_timeout(3000)
            page.locator("#start-training").click()
            end = time.time() + 900
            while time.time() < end and "step 70/" not in page.locator("#run-status").inner_text() \
                    and "done" not in page.locator("#run-status").inner_text():
                page.wait_for_timeout(1000)
            page.wait_for_timeout(3000)
            page.screenshot(path=str(out / "gui_runs.png"), full_page=True)
            page.locator("#run-stop").click()
            page.wait_for_timeout(5000)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {out / 'gui_train.png'} and {out / 'gui_runs.png'}")


if __name__ == "__main__":
    main()

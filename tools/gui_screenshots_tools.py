"""Screenshots of the web UI's Tools and Generate tabs for docs/gui.md, taken in a real browser (Debian's chromium
through playwright) on the embedded default model: a seeded random LoRA resized and checked from the Tools tab,
then an image generated with it.

    python tools/gui_screenshots_tools.py            # writes docs/images/gui_tools.png, docs/images/gui_generate.png
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _box(page, elem_id: str):  # noqa: ANN001, ANN202
    return page.locator(f"#{elem_id}").locator("textarea, input").first


def _wait_done(page, elem_id: str, timeout: float = 600) -> str:  # noqa: ANN001
    end = time.time() + timeout
    while time.time() < end:
        text = _box(page, elem_id).input_value()
        if text.startswith(("done", "failed", "not started")):
            return text
        time.sleep(0.5)
    raise TimeoutError(elem_id)


def write_demo_lora(path: Path) -> Path:
    """A seeded random rank-8 LoRA for the embedded default model."""
    from library.lora_io import modules_to_state_dict, save_lora
    from library.random_lora import random_lora

    modules = random_lora(ROOT / "default" / "sd1-shapes-64.safetensors", 8, seed=1, std=0.08)
    save_lora(path, modules_to_state_dict(modules), {}, None)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chromium", default="/usr/bin/chromium", help="browser executable [/usr/bin/chromium]")
    p.add_argument("--out", default=str(ROOT / "docs" / "images"), help="folder of the pictures [docs/images]")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="gui-shots-"))
    tools = work / "ui" / "tools"
    tools.mkdir(parents=True)
    lora = write_demo_lora(tools / "demo.safetensors")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "gui.py", "--port", str(port), "--output_root", str(work / "ui")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = server.stdout.readline().split()[-1]  # type: ignore[union-attr]
    out = Path(args.out)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium)
            page = browser.new_page(viewport={"width": 1280, "height": 1000}, device_scale_factor=1)
            page.goto(url)
            page.get_by_role("tab", name="Tools").click()
            page.get_by_role("tab", name="Resize", exact=True).click()
            _box(page, "opt-resize_lora-model").fill(str(lora))
            _box(page, "opt-resize_lora-save_to").fill(str(tools / "demo-r4.safetensors"))
            _box(page, "opt-resize_lora-new_rank").fill("4")
            page.locator("#tool-run-resize_lora").click()
            print("resize:", _wait_done(page, "tool-status-resize_lora"))
            page.get_by_role("tab", name="Check", exact=True).click()
            _box(page, "opt-check_lora_weights-file").fill(str(tools / "demo-r4.safetensors"))
            page.locator("#tool-run-check_lora_weights").click()
            print("check:", _wait_done(page, "tool-status-check_lora_weights"))
            page.wait_for_function("document.querySelector('#tool-check-table').innerText.includes('lora_te_')")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "gui_tools.png"), full_page=True)
            page.get_by_role("tab", name="Generate").click()
            _box(page, "gen-loras").fill(f"{lora} 1.0")
            page.locator("#gen-run").click()
            print("generate:", _wait_done(page, "gen-status"))
            page.locator("#gen-gallery img").first.wait_for()
            page.evaluate("window.scrollTo(0, 0)")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(out / "gui_generate.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {out / 'gui_tools.png'} and {out / 'gui_generate.png'}")


if __name__ == "__main__":
    main()

"""Screenshots of the web UI for docs/gui.md, taken in a real browser (Debian's chromium through playwright):
the Train tab with the quickstart loaded; the Runs tab during a short quickstart run (loss chart, the base model's
step-0 samples beside the first epoch's); a resize and a check run from the Tools tab; an image made with a LoRA
in the Generate tab.

    python tools/gui_screenshots.py       # docs/images/gui_train.png, gui_runs.png, gui_tools.png, gui_generate.png
    python tools/gui_screenshots.py --chromium /usr/bin/chromium --out /tmp/shots
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.gui_browser import CHROMIUM, box, browser_page, gui_server, set_field, tab, wait_value  # noqa: E402

DONE = ("done", "failed", "not started")


def write_demo_lora(path: Path) -> Path:
    """A seeded random rank-8 LoRA for the embedded default model."""
    from library.lora_io import modules_to_state_dict, save_lora
    from library.random_lora import random_lora

    modules = random_lora(ROOT / "default" / "sd1-shapes-64.safetensors", 8, seed=1, std=0.08)
    save_lora(path, modules_to_state_dict(modules), {}, None)
    return path


def train_and_runs(page, work: Path, out: Path) -> None:  # noqa: ANN001
    """The Train tab as it opens, then the Runs tab once a 2-epoch quickstart is well into its first epoch."""
    page.wait_for_timeout(3000)
    page.screenshot(path=str(out / "gui_train.png"))
    for name, value in (("output_dir", str(work / "run")), ("max_train_epochs", "2"), ("save_every_n_epochs", "1"),
                        ("sample_every_n_epochs", "1"), ("logging_dir", "")):
        set_field(page, "train_network", name, value)
    page.wait_for_timeout(2000)
    page.locator("#start-training").click()
    end = time.time() + 900
    while time.time() < end and not any(s in page.locator("#run-status").inner_text() for s in ("step 70/", "done")):
        page.wait_for_timeout(1000)
    page.wait_for_timeout(3000)
    page.screenshot(path=str(out / "gui_runs.png"), full_page=True)
    page.locator("#run-stop").click()
    page.wait_for_timeout(5000)


def tools_and_generate(page, tools: Path, out: Path) -> None:  # noqa: ANN001
    """A LoRA resized to rank 4 and checked (the module table), then an image generated with the LoRA."""
    lora = write_demo_lora(tools / "demo.safetensors")
    tab(page, "Tools")
    tab(page, "Resize")
    box(page, "opt-resize_lora-model").fill(str(lora))
    box(page, "opt-resize_lora-save_to").fill(str(tools / "demo-r4.safetensors"))
    box(page, "opt-resize_lora-new_rank").fill("4")
    page.locator("#tool-run-resize_lora").click()
    print("resize:", wait_value(page, "tool-status-resize_lora", DONE, 600))
    tab(page, "Check")
    box(page, "opt-check_lora_weights-file").fill(str(tools / "demo-r4.safetensors"))
    page.locator("#tool-run-check_lora_weights").click()
    print("check:", wait_value(page, "tool-status-check_lora_weights", DONE, 600))
    page.wait_for_function("document.querySelector('#tool-check-table').innerText.includes('lora_te_')")
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out / "gui_tools.png"), full_page=True)
    tab(page, "Generate")
    box(page, "gen-loras").fill(f"{lora} 1.0")
    page.locator("#gen-run").click()
    print("generate:", wait_value(page, "gen-status", DONE, 600))
    page.locator("#gen-gallery img").first.wait_for()
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out / "gui_generate.png"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chromium", default=CHROMIUM, help=f"browser executable [{CHROMIUM}]")
    p.add_argument("--out", default=str(ROOT / "docs" / "images"), help="folder of the pictures [docs/images]")
    args = p.parse_args()
    work, out = Path(tempfile.mkdtemp(prefix="gui-shots-")), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tools = work / "ui" / "tools"  # served: the UI shows files under its own outputs only
    tools.mkdir(parents=True)
    with gui_server(work / "ui") as server, browser_page(server["url"], args.chromium, 1280, 1000) as page:
        train_and_runs(page, work, out)
    with gui_server(work / "ui") as server, browser_page(server["url"], args.chromium, 1280, 1000) as page:
        tools_and_generate(page, tools, out)
    print(f"wrote {', '.join(str(out / f'gui_{n}.png') for n in ('train', 'runs', 'tools', 'generate'))}")


if __name__ == "__main__":
    main()

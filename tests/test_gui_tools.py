"""The web UI's Tools and Generate tabs in a real browser (Chromium through playwright) on tiny models: a resize and
a check run from the page, a bad value refused with the script's own error line, and an image made with a LoRA.
Plus the argv and error plumbing without a browser."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from library.errors import ToolkitError  # noqa: E402
from library.gui.generate_run import check_generation_argv, lora_argv, parse_lora_lines  # noqa: E402
from library.gui.tools_run import clean_output, error_line  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


# ---- without a browser ---------------------------------------------------------------------------------------
def test_lora_lines_and_generation_checks():
    loras = parse_lora_lines("a.safetensors 0.5\n# note\n\nmy dir/b.safetensors\nc.safetensors -1")
    assert loras == [("a.safetensors", 0.5), ("my dir/b.safetensors", 1.0), ("c.safetensors", -1.0)]
    assert lora_argv(loras, False) == ["--network_module", "networks.lora", "--network_weights", "a.safetensors",
                                       "my dir/b.safetensors", "c.safetensors", "--network_mul", "0.5", "1", "-1"]
    with pytest.raises(ToolkitError, match="LoRAs line 1: multiplier nan: must be a finite number"):
        parse_lora_lines("a.safetensors nan")
    with pytest.raises(ToolkitError, match=r"^--steps 0: must be greater than 0$"):
        check_generation_argv(["--ckpt", "m.safetensors", "--steps", "0"])
    with pytest.raises(ToolkitError, match="--ckpt is required"):
        check_generation_argv(["--prompt", "x"])
    assert error_line("INFO: x\nerror: --save_to a: is a folder\n") == "error: --save_to a: is a folder"
    assert clean_output("bar 1/3\rbar 2/3\rbar 3/3\nend") == "bar 3/3\nend"


# ---- in Chromium -------------------------------------------------------------------------------------------------
def _browser_or_skip() -> None:
    pytest.importorskip("gradio")
    pytest.importorskip("playwright")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI: Chromium is required for the browser tests ({CHROMIUM} missing)")
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian package `chromium`): the browser tests need one")


def _patient_url_check() -> None:
    """gradio's launch gives up when its first HEAD request takes over 3 s, which a busy 2-core test machine can
    exceed: wait up to 60 s here (the server is the same; only the test's patience changes)."""
    import httpx
    from gradio import networking

    def url_ok(url: str) -> bool:
        end = time.time() + 60
        while time.time() < end:
            try:
                if httpx.head(url, timeout=20).status_code < 400:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        return False

    networking.url_ok = url_ok


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, object]]:  # noqa: ANN001
    """A UI server on a free port, its outputs in a temporary folder; the scripts it starts use one thread."""
    _browser_or_skip()
    from library.gui.app import build_app, launch, make_context

    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # tiny models: threads only make the busy test machine spin
    _patient_url_check()
    ctx = make_context(tmp_path_factory.mktemp("gui"))
    app = build_app(ctx)
    with socket.socket() as s:  # a free port: other servers (tests running beside these) may hold 7860
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = launch(app, "127.0.0.1", port, None, block=False)
    yield url, ctx
    app.close()
    if old is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = old


@pytest.fixture(scope="module")
def page(server) -> Iterator[object]:  # noqa: ANN001
    from playwright.sync_api import sync_playwright

    url, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"))
        pg = browser.new_page(viewport={"width": 1280, "height": 1000})
        pg.goto(url)
        yield pg
        browser.close()


def _box(page, elem_id: str):  # noqa: ANN001, ANN202
    return page.locator(f"#{elem_id}").locator("textarea, input").first


def _wait_status(page, elem_id: str, timeout: float = 240, ends: tuple[str, ...] = ("done", "failed")) -> str:  # noqa: ANN001
    """The status once it starts with one of `ends` (a run that started: done or failed)."""
    end = time.time() + timeout
    text = ""
    while time.time() < end:
        text = _box(page, elem_id).input_value()
        if text.startswith(ends):
            return text
        time.sleep(0.3)
    raise TimeoutError(f"{elem_id}: still {text!r}")


def test_resize_and_check_from_the_page(page, server, tmp_path):  # noqa: ANN001
    from lora_helpers import make_lora
    from safetensors.torch import load_file

    _, ctx = server
    lora = make_lora(tmp_path / "in.safetensors", "sd1", dim=4)
    out = ctx.output_dir("tools") / "small.safetensors"
    page.get_by_role("tab", name="Tools").click()
    page.get_by_role("tab", name="Resize", exact=True).click()
    _box(page, "opt-resize_lora-model").fill(str(lora))
    _box(page, "opt-resize_lora-save_to").fill(str(out))
    _box(page, "opt-resize_lora-new_rank").fill("two")
    page.locator("#tool-run-resize_lora").click()
    assert _wait_status(page, "tool-status-resize_lora", 30, ("not started",))
    assert _box(page, "tool-error-resize_lora").input_value() == "error: --new_rank: invalid int value: 'two'"
    assert not out.exists()

    _box(page, "opt-resize_lora-new_rank").fill("2")
    page.locator("#tool-run-resize_lora").click()
    status = _wait_status(page, "tool-status-resize_lora")
    assert status.startswith("done: exit code 0"), (status, _box(page, "tool-output-resize_lora").input_value())
    assert "--new_rank 2" in _box(page, "tool-cmd-resize_lora").input_value()
    downs = [t for k, t in load_file(out).items() if k.endswith("lora_down.weight")]
    assert downs and all(t.shape[0] == 2 for t in downs)
    page.locator("#tool-files-resize_lora td[aria-label='small.safetensors']").wait_for(timeout=10000)

    page.get_by_role("tab", name="Check", exact=True).click()
    _box(page, "opt-check_lora_weights-file").fill(str(out))
    page.locator("#tool-run-check_lora_weights").click()
    status = _wait_status(page, "tool-status-check_lora_weights")
    assert status.startswith("done: exit code 0"), status
    assert f"summary: {len(downs)} modules" in _box(page, "tool-output-check_lora_weights").input_value()
    table = page.locator("#tool-check-table")
    page.wait_for_function("document.querySelector('#tool-check-table').innerText.includes('lora_te_')",
                           timeout=10000)
    text = table.inner_text()  # rows scrolled out of the table's view may be left out: check those shown
    names = {k.split(".")[0] for k in load_file(out)}
    shown = [n for n in names if f"\n{n}\n" in text]
    assert len(shown) >= 10 and all(f"\n{n}\n2\n2\n" in text for n in shown)  # rank 2, alpha 2


def test_generate_shows_an_image_made_with_a_lora(page, server, tiny_checkpoints, tmp_path):  # noqa: ANN001
    from lora_helpers import make_lora
    from PIL import Image

    _, ctx = server
    lora = make_lora(tmp_path / "gen.safetensors", "sd1", dim=4)
    page.get_by_role("tab", name="Generate").click()
    _box(page, "opt-gen_img_diffusers-ckpt").fill(str(tiny_checkpoints["sd1"]))
    _box(page, "opt-gen_img_diffusers-prompt").fill("a red circle")
    _box(page, "opt-gen_img_diffusers-steps").fill("0")
    _box(page, "gen-loras").fill(f"{lora} 0.7")
    page.locator("#gen-run").click()
    assert _wait_status(page, "gen-status", 30, ("not started",))
    assert _box(page, "gen-error").input_value() == "error: --steps 0: must be greater than 0"
    assert not list((ctx.output_root / "generate").rglob("*.png"))

    _box(page, "opt-gen_img_diffusers-steps").fill("2")
    page.locator("#gen-run").click()
    status = _wait_status(page, "gen-status")
    assert status.startswith("done: exit code 0"), (status, _box(page, "gen-log").input_value())
    page.locator("#gen-gallery img").first.wait_for(timeout=10000)
    params = _box(page, "gen-params").input_value()
    assert "a red circle" in params and "Steps: 2" in params and "LoRAs: gen.safetensors:0.7" in params
    [png] = list((ctx.output_root / "generate").rglob("*.png"))
    with Image.open(png) as im:
        assert im.text["networks"] == "gen.safetensors:0.7" and im.size == (64, 64)

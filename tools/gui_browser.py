"""Driving the web UI in a real browser, shared by its tests (tests/test_gui*.py) and tools/gui_screenshots.py:
one `python gui.py` server started as a user starts it, Debian's chromium driven by playwright, and the page
helpers (fields by option name, groups opened, text awaited). The tests share one server and one page per session
(`gui_server`, `gui_page` in tests/conftest.py): starting them is most of a browser test's cost."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    for module, why in (("playwright", "playwright"), ("gradio", "gradio")):
        if importlib.util.find_spec(module) is None:
            return f"{why} is not installed (pip install -r requirements-dev.txt)"
    if not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM} (apt-get install -y chromium)"
    return None


@contextmanager
def gui_server(output_root: Path, *args: str) -> Iterator[dict]:
    """`python gui.py --port <free> --output_root output_root`, yielding {"url", "proc", "out"}; stopped after."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: threads only make a busy machine spin
    proc = subprocess.Popen([sys.executable, "gui.py", "--port", str(port), "--output_root", str(output_root), *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    if not line.startswith("serving "):
        proc.kill()
        raise RuntimeError(f"gui.py did not start: {line}{proc.stdout.read()[-3000:]}")
    try:
        yield {"url": line.split()[-1], "proc": proc, "out": Path(output_root)}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def browser_page(url: str, chromium: str = CHROMIUM, width: int = 1400, height: int = 1000) -> Iterator[object]:
    """A chromium page on `url`, once the Train tab is shown; `page.requests` lists every URL it asked for,
    `page.problems` its console errors."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
        page.requests, page.problems = [], []
        page.on("request", lambda r: page.requests.append(r.url))
        page.on("console", lambda m: page.problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.problems.append(str(e)))
        page.goto(url)
        page.wait_for_selector("#start-training", timeout=120_000)
        try:
            yield page
        finally:
            browser.close()


def tab(page, name: str) -> None:  # noqa: ANN001
    """Show a top-level tab (Train, Runs, Tools, Generate)."""
    page.get_by_role("tab", name=name, exact=True).first.click()


def box(page, elem_id: str):  # noqa: ANN001, ANN201
    """The input or textarea of the component with `elem_id`."""
    return page.locator(f"#{elem_id}").locator("textarea, input").first


def field(page, script: str, name: str):  # noqa: ANN001, ANN201
    """The input of an option's field (`field(page, "train_network", "network_dim")`)."""
    from library.gui.forms import elem_id

    return box(page, elem_id(script, name))


def expand(accordion) -> None:  # noqa: ANN001
    """Open a gradio accordion unless it is open already (a click toggles: its header carries the class `open`
    while open, which a field still mounting would not show yet)."""
    header = accordion.locator(".label-wrap").first
    header.wait_for(timeout=30_000)
    if "open" not in (header.get_attribute("class") or "").split():
        header.click()


def open_group(page, script: str, name: str) -> None:  # noqa: ANN001
    """Open the accordion of an option's group (gradio renders a closed accordion's fields only once opened)."""
    from library.gui.forms import elem_id
    from library.options.network_args import network_arg_options
    from library.options.train import train_options

    if field(page, script, name).is_visible():
        return
    train = script.endswith("train_network")
    if not train:  # a network module's fields: inside the network_args accordion
        expand(page.locator("#netargs-box"))
    opts = train_options(script) if train else network_arg_options(script)
    group = next(o.group for o in opts if o.name == name)
    expand(page.locator(f"#{elem_id(script, group, 'grp')}"))
    field(page, script, name).wait_for(timeout=30_000)


def set_field(page, script: str, name: str, value: str, timeout: float = 30) -> None:  # noqa: ANN001
    """Type `value` into an option's field, opening its group first. A group opened just now may still be
    mounting its fields, and the mount puts back the value the page was built with: typed again until the value
    holds over two reads."""
    open_group(page, script, name)
    box = field(page, script, name)
    end = time.time() + timeout
    box.fill(value)
    while time.time() < end:
        page.wait_for_timeout(250)
        if box.input_value() == value:
            page.wait_for_timeout(250)
            if box.input_value() == value:
                return
        box.fill(value)
    raise AssertionError(f"{script} {name}: the field does not keep {value!r}")


def preview(page, until: str | tuple[str, ...] | None = None, timeout: float = 60) -> list[str]:  # noqa: ANN001
    """The command line the Train tab shows (once it contains `until`: a string, or each of several), without
    `python <script>.py`."""
    wanted = (until,) if isinstance(until, str) else tuple(until or ())
    end = time.time() + timeout
    while True:
        text = _read(lambda: page.locator("#cmd-preview textarea").input_value(timeout=10_000))
        if (text is not None and all(w in text for w in wanted)) or time.time() > end:
            return shlex.split(text or "")[2:]
        page.wait_for_timeout(100)


def wait_text(page, selector: str, pattern: str, timeout: float = 120) -> str:  # noqa: ANN001
    """The inner text of `selector` once it matches `pattern`."""
    end = time.time() + timeout
    text = ""
    while time.time() < end:
        text = _read(lambda: page.locator(selector).inner_text(timeout=10_000))
        if text is not None and re.search(pattern, text):
            return text
        page.wait_for_timeout(100)
    raise AssertionError(f"{selector}: {pattern!r} not seen; last: {text!r}")


def wait_value(page, elem_id: str, starts: tuple[str, ...], timeout: float = 240) -> str:  # noqa: ANN001
    """The value of a textbox once it starts with one of `starts` (a tool's status: done, failed, not started)."""
    end = time.time() + timeout
    text = ""
    while time.time() < end:
        text = _read(lambda: box(page, elem_id).input_value(timeout=10_000))
        if text is not None and text.startswith(starts):
            return text
        page.wait_for_timeout(100)
    raise AssertionError(f"{elem_id}: still {text!r}")


def load_config(page, path: str) -> None:  # noqa: ANN001
    """Load a config file into the Train tab."""
    box(page, "config-path").fill(path)
    page.locator("#config-load").click()
    wait_text(page, "#error-box", re.escape(f"loaded {path}"))


def _read(get) -> str | None:  # noqa: ANN001
    """A locator's text, or None while the element is re-rendered or the page is too busy to answer (a loaded
    machine): the callers look again until their own deadline."""
    from playwright.sync_api import Error

    try:
        return get()
    except Error:
        return None

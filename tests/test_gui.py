"""The web UI (`gui.py`) in a real browser: Debian's chromium driven by playwright, against one server started as a
user starts it. Offline page (every request local, no console errors), every implemented option of both training
scripts on the form, config files saved from and loaded into the page agree with the command line, a run started
from the page (progress, loss, step-0 samples), stopped (resumable state), resumed to the end, with the same LoRA as
the command line; a bad value shows the command line's error and starts nothing.

Skipped, with the reason, where chromium or playwright is missing; with CI=true they must run (`.ci/run` installs
chromium)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import toml

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
sys.path.insert(0, str(ROOT))


def test_listen_without_auth_is_refused():
    out = subprocess.run([sys.executable, "gui.py", "--listen"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == ["error: --listen: serving other machines needs --auth user:password "
                                               "or --auth_file"]
    bad = subprocess.run([sys.executable, "gui.py", "--listen", "--auth", "nopassword"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --auth: expected user:password"


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -r requirements-dev.txt)"
    if not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM} (apt-get install -y chromium)"
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    missing = _browser_missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser tests: {missing}")
        pytest.skip(missing)
    if not (ROOT / "default" / "img" / "10_sks").is_dir():
        subprocess.run([sys.executable, "tools/make_default.py"], cwd=ROOT, check=True, capture_output=True)
    out = tmp_path_factory.mktemp("gui")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "gui.py", "--port", str(port), "--output_root", str(out / "ui")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    if not line.startswith("serving "):
        proc.kill()
        pytest.fail(f"gui.py did not start: {line}{proc.stdout.read()[-3000:]}")
    yield {"url": line.split()[-1], "out": out, "proc": proc}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.requests, page.problems = [], []
        page.on("request", lambda r: page.requests.append(r.url))
        page.on("console", lambda m: page.problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.problems.append(str(e)))
        page.goto(server["url"])
        page.wait_for_selector("#start-training", timeout=120_000)
        yield page
        browser.close()


def field(page, script: str, name: str):
    from library.gui.forms import elem_id

    return page.locator(f"#{elem_id(script, name)} input, #{elem_id(script, name)} textarea").first


def open_group(page, script: str, name: str) -> None:
    """Open the accordion of an option's group (gradio renders a closed accordion's fields only once opened)."""
    from library.options.network_args import network_arg_options
    from library.options.train import train_options

    if field(page, script, name).count():
        return
    opts = train_options(script) if script.endswith("train_network") else network_arg_options(script)
    group = next(o.group for o in opts if o.name == name)
    from library.gui.forms import elem_id

    page.locator(f"#{elem_id(script, group, 'grp')}").locator("button").first.click()
    field(page, script, name).wait_for(timeout=30_000)


def set_field(page, script: str, name: str, value: str) -> None:
    open_group(page, script, name)
    field(page, script, name).fill(value)


def preview(page, until: str | None = None, timeout: float = 60) -> list[str]:
    """The command line the page shows (after it contains `until`)."""
    import shlex

    end = time.time() + timeout
    while True:
        try:
            text = page.locator("#cmd-preview textarea").input_value(timeout=10_000)
        except Exception:  # noqa: BLE001 - the page is busy re-rendering: look again
            text = ""
            if time.time() < end:
                continue
        if until is None or until in text or time.time() > end:
            return shlex.split(text)[2:]
        page.wait_for_timeout(200)


def wait_text(page, selector: str, pattern: str, timeout: float = 120) -> str:
    end = time.time() + timeout
    text = ""
    while time.time() < end:
        try:
            text = page.locator(selector).inner_text(timeout=10_000)
        except Exception:  # noqa: BLE001 - the page re-renders the element: look again
            continue
        if re.search(pattern, text):
            return text
        page.wait_for_timeout(300)
    raise AssertionError(f"{selector}: {pattern!r} not seen; last: {text!r}")


def load(page, path: str) -> None:
    page.locator("#config-path input, #config-path textarea").first.fill(path)
    page.locator("#config-load").click()
    wait_text(page, "#error-box", re.escape(f"loaded {path}"))


def test_page_is_offline_and_shows_every_option(page, server):
    from library.gui.train_tab import PAGE_OWNED
    from library.options.spec import IMPLEMENTED, REFUSED, TRAIN_SCRIPTS
    from library.options.train import train_options

    base = server["url"].rstrip("/")
    assert page.requests and all(u.startswith(base + "/") or u == base for u in page.requests), \
        [u for u in page.requests if not u.startswith(base)]
    assert page.problems == []
    components = page.evaluate("Object.fromEntries(window.gradio_config.components.filter(c => c.props && "
                               "c.props.elem_id).map(c => [c.props.elem_id, c.props.interactive]))")
    seen = 0
    for script in TRAIN_SCRIPTS:
        for o in train_options(script):
            if o.name in PAGE_OWNED:
                continue
            status = o.status_in(script)[0]
            key = f"opt-{script}-{o.name}"
            assert key in components, key
            assert components[key] is not False or status == REFUSED, key
            if status == REFUSED:
                assert components[key] is False, key
            seen += status == IMPLEMENTED
    assert seen > 250
    # the visible form shows each option's name, help and default
    label = page.locator("#opt-train_network-network_alpha")
    assert "network_alpha" in label.inner_text() and "[1.0]" in label.inner_text()
    # opens with the quickstart: the command line is README command 1's options
    from library.options.configfile import read_config_file
    from library.options.parse import build_parser, parse_values

    parser = build_parser("train_network")
    quick = read_config_file(parser, ROOT / "examples" / "quickstart.toml")
    shown = parse_values(build_parser("train_network"), preview(page))
    assert {k: shown[k] for k in quick} == quick


def test_saved_and_loaded_configs_agree_with_the_command_line(page, server, tmp_path):
    from library.options.configfile import read_config_file
    from library.options.parse import build_parser, parse_training_args, parse_values

    set_field(page, "train_network", "network_dim", "12")
    set_field(page, "train_network", "learning_rate", "2e-3")
    open_group(page, "train_network", "gradient_checkpointing")
    page.locator("#opt-train_network-gradient_checkpointing input[type=checkbox]").check()
    page.locator("#netargs-box").click()
    set_field(page, "networks.lora", "conv_dim", "4")
    set_field(page, "train_network", "network_args", "foo=bar")
    argv = preview(page, "foo=bar")
    assert argv[argv.index("--network_args"):][:3] == ["--network_args", "conv_dim=4", "foo=bar"]
    saved = tmp_path / "saved.toml"
    page.locator("#config-path input, #config-path textarea").first.fill(str(saved))
    page.locator("#config-save").click()
    wait_text(page, "#error-box", "saved ")
    # the command line writes the same file from the same options, and runs the saved one unchanged
    again = tmp_path / "again.toml"
    cli = subprocess.run([sys.executable, "train_network.py", "--config_file", str(again), "--output_config", *argv],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert toml.loads(saved.read_text()) == toml.loads(again.read_text())
    cfg = parse_training_args(["--config_file", str(saved)])
    assert cfg.network_dim == 12 and cfg.learning_rate == 2e-3 and cfg.gradient_checkpointing
    assert cfg.network_args == ["conv_dim=4", "foo=bar"]

    hand = tmp_path / "hand.toml"
    hand.write_text('[model]\npretrained_model_name_or_path = "m.safetensors"\n[net]\nnetwork_dim = 16\n'
                    'network_alpha = 4\nnetwork_args = ["conv_dim=2", "conv_alpha=1"]\n[train]\nflip_aug = true\n'
                    'learning_rate = 1e-4\nmax_train_steps = 30\nlr_warmup_steps = "5%"\n', encoding="utf-8")
    load(page, str(hand))
    assert field(page, "train_network", "network_dim").input_value() == "16"
    assert field(page, "networks.lora", "conv_dim").input_value() == "2"
    open_group(page, "train_network", "flip_aug")
    assert page.locator("#opt-train_network-flip_aug input[type=checkbox]").is_checked()
    parser = build_parser("train_network")
    shown = parse_values(parser, preview(page))
    expected = read_config_file(parser, hand)
    assert {k: shown[k] for k in expected} == expected
    assert not shown["gradient_checkpointing"]  # loading a config starts from the defaults


def test_bad_value_shows_the_command_line_error_and_starts_nothing(page, server):
    from library.errors import ToolkitError
    from library.options.parse import parse_training_args

    load(page, "examples/quickstart.toml")
    set_field(page, "train_network", "network_dim", "-3")
    runs = server["out"] / "ui" / "runs"
    before = sorted(runs.iterdir()) if runs.exists() else []
    page.locator("#start-training").click()
    with pytest.raises(ToolkitError) as cli:
        parse_training_args(preview(page, "--network_dim -3"))
    wait_text(page, "#error-box", re.escape(f"error: {cli.value}"), 30)
    assert (sorted(runs.iterdir()) if runs.exists() else []) == before


def test_start_stop_resume_gives_the_command_lines_lora(page, server, tmp_path):
    import torch
    from safetensors.torch import load_file

    load(page, "examples/quickstart.toml")
    ui_out = tmp_path / "ui"
    for name, value in (("output_dir", str(ui_out)), ("max_train_epochs", ""), ("max_train_steps", "30"),
                        ("save_every_n_epochs", ""), ("sample_every_n_epochs", ""), ("logging_dir", "")):
        set_field(page, "train_network", name, value)
    argv = preview(page, "--max_train_steps 30")
    page.locator("#start-training").click()
    wait_text(page, "#run-status", r"step ([2-9]|1[0-9])/30", 180)  # progress, live
    page.locator("#run-stop").click()
    wait_text(page, "#run-status", r"stopped", 120)
    assert page.locator("#run-samples img").count() >= 3  # the step-0 samples
    assert page.locator("#loss-chart canvas, #loss-chart svg").count() >= 1
    states = sorted(ui_out.glob("quickstart-step*-state"))
    assert states and (states[-1] / "train_state.json").is_file()
    page.locator("#run-resume").click()
    wait_text(page, "#run-status", r"done .*step 30/30", 240)
    assert page.locator("#run-files").inner_text().count("quickstart.safetensors") == 1
    assert page.problems == []

    cli = subprocess.run([sys.executable, "train_network.py", *[a for a in argv if a != "--sample_at_first"],
                          "--output_dir", str(tmp_path / "cli"), "--sample_prompts", ""], cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    a, b = load_file(ui_out / "quickstart.safetensors"), load_file(tmp_path / "cli" / "quickstart.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shutil.rmtree(ui_out, ignore_errors=True)

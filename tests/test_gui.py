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
import subprocess
import sys
import time
from pathlib import Path

import pytest
import toml

from tools.gui_browser import box, field, load_config, open_group, preview, set_field, tab, wait_text

ROOT = Path(__file__).resolve().parents[1]


def test_listen_without_auth_is_refused():
    out = subprocess.run([sys.executable, "gui.py", "--listen"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == ["error: --listen: serving other machines needs --auth user:password "
                                               "or --auth_file"]
    bad = subprocess.run([sys.executable, "gui.py", "--listen", "--auth", "nopassword"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --auth: expected user:password"


def test_page_is_offline_and_shows_every_option(gui_page, gui_server):
    from library.gui.forms import elem_id
    from library.gui.train_tab import PAGE_OWNED
    from library.options.configfile import read_config_file
    from library.options.parse import build_parser, parse_values
    from library.options.spec import IMPLEMENTED, REFUSED, TRAIN, TRAIN_SCRIPTS
    from library.options.train import train_options

    page = gui_page
    base = gui_server["url"].rstrip("/")
    assert page.requests and all(u.startswith(base + "/") or u == base for u in page.requests), \
        [u for u in page.requests if not u.startswith(base)]
    assert page.problems == []
    components = page.evaluate("Object.fromEntries(window.gradio_config.components.filter(c => c.props && "
                               "c.props.elem_id).map(c => [c.props.elem_id, c.props.interactive]))")
    # both scripts share one form (their options are declared alike): every option of each has its field, and a
    # refused one is disabled
    first = {o.name: o.status_in(TRAIN)[0] for o in train_options(TRAIN)}
    seen = 0
    for script in TRAIN_SCRIPTS:
        for o in train_options(script):
            if o.name in PAGE_OWNED:
                continue
            status = o.status_in(script)[0]
            key = elem_id(TRAIN, o.name)
            assert key in components, key
            assert first.get(o.name) == status, (script, o.name)  # else the field must follow the chosen script
            assert (components[key] is False) == (status == REFUSED), key
            seen += status == IMPLEMENTED
    assert seen > 250
    # the visible form shows each option's name, help and default
    label = page.locator("#opt-train_network-network_alpha")
    assert "network_alpha" in label.inner_text() and "[1.0]" in label.inner_text()
    # opens with the quickstart: the command line is README command 1's options
    parser = build_parser("train_network")
    quick = read_config_file(parser, ROOT / "examples" / "quickstart.toml")
    shown = parse_values(build_parser("train_network"), preview(page))
    assert {k: shown[k] for k in quick} == quick


def test_saved_and_loaded_configs_agree_with_the_command_line(gui_page, tmp_path):
    import train_network
    from library.options.configfile import read_config_file
    from library.options.parse import build_parser, parse_training_args, parse_values

    page = gui_page
    tab(page, "Train")
    set_field(page, "train_network", "network_dim", "12")
    set_field(page, "train_network", "learning_rate", "2e-3")
    open_group(page, "train_network", "gradient_checkpointing")
    page.locator("#opt-train_network-gradient_checkpointing input[type=checkbox]").check()
    set_field(page, "networks.lora", "conv_dim", "4")
    set_field(page, "train_network", "network_args", "foo=bar")
    argv = preview(page, ("--network_dim 12", "--learning_rate 2e-3", "--gradient_checkpointing", "foo=bar"))
    assert argv[argv.index("--network_args"):][:3] == ["--network_args", "conv_dim=4", "foo=bar"]
    saved = tmp_path / "saved.toml"
    box(page, "config-path").fill(str(saved))
    page.locator("#config-save").click()
    wait_text(page, "#error-box", "saved ")
    # the command line writes the same file from the same options, and runs the saved one unchanged
    again = tmp_path / "again.toml"
    assert train_network.main(["--config_file", str(again), "--output_config", *argv]) is None
    assert toml.loads(saved.read_text()) == toml.loads(again.read_text())
    cfg = parse_training_args(["--config_file", str(saved)])
    assert cfg.network_dim == 12 and cfg.learning_rate == 2e-3 and cfg.gradient_checkpointing
    assert cfg.network_args == ["conv_dim=4", "foo=bar"]

    hand = tmp_path / "hand.toml"
    hand.write_text('[model]\npretrained_model_name_or_path = "m.safetensors"\n[net]\nnetwork_dim = 16\n'
                    'network_alpha = 4\nnetwork_args = ["conv_dim=2", "conv_alpha=1"]\n[train]\nflip_aug = true\n'
                    'learning_rate = 1e-4\nmax_train_steps = 30\nlr_warmup_steps = "5%"\n', encoding="utf-8")
    load_config(page, str(hand))
    assert field(page, "train_network", "network_dim").input_value() == "16"
    assert field(page, "networks.lora", "conv_dim").input_value() == "2"  # its group is open since the edit above
    open_group(page, "train_network", "flip_aug")
    assert page.locator("#opt-train_network-flip_aug input[type=checkbox]").is_checked()
    parser = build_parser("train_network")
    expected = read_config_file(parser, hand)
    end = time.time() + 60
    while True:  # a preview computed from the fields while the load filled them is followed by the final one
        shown = parse_values(parser, preview(page, "--network_dim 16"))
        if {k: shown[k] for k in expected} == expected or time.time() > end:
            break
        page.wait_for_timeout(200)
    assert {k: shown[k] for k in expected} == expected
    assert not shown["gradient_checkpointing"]  # loading a config starts from the defaults


def test_bad_value_shows_the_command_line_error_at_the_field_and_starts_nothing(gui_page, gui_server):
    from library.errors import ToolkitError
    from library.options.parse import parse_training_args

    page = gui_page
    tab(page, "Train")
    load_config(page, "examples/quickstart.toml")
    set_field(page, "train_network", "network_dim", "-3")
    runs = gui_server["out"] / "runs"
    before = sorted(runs.iterdir()) if runs.exists() else []
    page.locator("#start-training").click(timeout=120_000)  # a busy 2-core machine: the page may lag
    with pytest.raises(ToolkitError) as cli:
        parse_training_args(preview(page, "--network_dim -3"))
    line = f"error: {cli.value}"
    assert line.startswith("error: --network_dim -3: ")
    wait_text(page, "#error-box", re.escape(line), 60)  # above the form
    # and at the field: marked, its group opened, scrolled into view, the line under it
    note = page.locator("#opt-train_network-network_dim-error")
    note.wait_for(timeout=30_000)
    assert note.inner_text() == line and note.is_visible()
    assert "field-has-error" in page.locator("#opt-train_network-network_dim").get_attribute("class")
    assert (sorted(runs.iterdir()) if runs.exists() else []) == before
    # a field in a closed group is opened to show it
    set_field(page, "train_network", "network_dim", "8")
    wait_text(page, "#error-box", "^$", 60)  # editing clears the error, and the mark
    assert page.locator(".field-error-note").count() == 0
    set_field(page, "train_network", "max_grad_norm", "x")
    page.locator("#opt-train_network-max_grad_norm").evaluate("e => e.closest('.opt-group').querySelector("
                                                            "'button').click()")  # close its group again
    page.locator("#start-training").click(timeout=120_000)  # a busy 2-core machine: the page may lag
    note = page.locator("#opt-train_network-max_grad_norm-error")
    note.wait_for(timeout=30_000)
    assert note.inner_text().startswith("error: --max_grad_norm") and note.is_visible()
    assert (sorted(runs.iterdir()) if runs.exists() else []) == before


def _short_quickstart(path: Path, output_dir: Path, steps: int) -> Path:
    """The quickstart config, `steps` steps, writing to `output_dir`, no epoch saves, samples only at step 0."""
    cfg = toml.loads((ROOT / "examples" / "quickstart.toml").read_text(encoding="utf-8"))
    del cfg["training_arguments"]["max_train_epochs"]
    cfg["training_arguments"]["max_train_steps"] = steps
    cfg["saving_arguments"].update(output_dir=str(output_dir))
    del cfg["saving_arguments"]["save_every_n_epochs"], cfg["sample_prompt_arguments"]["sample_every_n_epochs"]
    del cfg["logging_arguments"]
    path.write_text(toml.dumps(cfg), encoding="utf-8")
    return path


def test_start_stop_resume_gives_the_command_lines_lora(gui_page, tmp_path):
    import torch
    from safetensors.torch import load_file

    page, steps = gui_page, 20
    tab(page, "Train")
    ui_out = tmp_path / "ui"
    load_config(page, str(_short_quickstart(tmp_path / "short.toml", ui_out, steps)))
    argv = preview(page, f"--max_train_steps {steps}")
    # the command line's run of the same options goes on beside the page's (no samples: they change nothing)
    cli = subprocess.Popen([sys.executable, "train_network.py", *[a for a in argv if a != "--sample_at_first"],
                            "--output_dir", str(tmp_path / "cli"), "--sample_prompts", ""], cwd=ROOT,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    try:
        page.locator("#start-training").click(timeout=120_000)  # a busy 2-core machine: the page may lag
        # Stop as soon as training started: the trainer stops after its next step and saves a resumable state,
        # however slowly the page follows (Stop acts at once: it waits behind no other event)
        wait_text(page, "#run-status", rf"step \d+/{steps}", 240)
        page.locator("#run-stop").click()
        wait_text(page, "#run-status", r"^stopped ·", 240)  # the run's status (not the trainer's last phase)
        states = sorted(ui_out.glob("quickstart-step*-state"))
        assert states and (states[-1] / "train_state.json").is_file()
        wait_text(page, "#run-status", r"step [1-9]\d*/.* loss \d", 30)  # progress
        page.locator("#loss-chart canvas, #loss-chart svg").first.wait_for(timeout=30_000)  # a loss point
        page.locator("#run-samples img").nth(2).wait_for(timeout=30_000)  # the three step-0 samples
        page.locator("#run-resume").click()
        wait_text(page, "#run-status", rf"done .*step {steps}/{steps}", 240)
        assert page.locator("#run-files").inner_text().count("quickstart.safetensors") == 1
        assert page.problems == []
        _, err = cli.communicate(timeout=300)
    finally:
        cli.kill()
    assert cli.returncode == 0, err[-2000:]
    a, b = load_file(ui_out / "quickstart.safetensors"), load_file(tmp_path / "cli" / "quickstart.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

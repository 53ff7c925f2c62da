"""The web UI's Tools and Generate tabs in a real browser (Chromium through playwright) on tiny models: a resize and
a check run from the page, a bad value refused with the script's own error line, and an image made with a LoRA.
Plus the argv and error plumbing without a browser."""

from __future__ import annotations

import pytest

from library.errors import ToolkitError
from library.gui.generate_run import check_generation_argv, lora_argv, parse_lora_lines
from library.gui.tools_run import clean_output, error_line
from tools.gui_browser import box, tab, wait_value


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


# ---- in Chromium (the session's server and page: tests/conftest.py) ------------------------------------------------
def test_resize_and_check_from_the_page(gui_page, gui_server, tmp_path):  # noqa: ANN001
    from lora_helpers import make_lora
    from safetensors.torch import load_file

    page = gui_page
    lora = make_lora(tmp_path / "in.safetensors", "sd1", dim=4)
    out = gui_server["out"] / "tools" / "small.safetensors"
    tab(page, "Tools")
    page.get_by_role("tab", name="Resize", exact=True).click()
    box(page, "opt-resize_lora-model").fill(str(lora))
    box(page, "opt-resize_lora-save_to").fill(str(out))
    box(page, "opt-resize_lora-new_rank").fill("two")
    page.locator("#tool-run-resize_lora").click()
    assert wait_value(page, "tool-status-resize_lora", ("not started",), 60)
    line = "error: --new_rank: invalid int value: 'two'"
    assert box(page, "tool-error-resize_lora").input_value() == line
    assert page.locator("#opt-resize_lora-new_rank-error").inner_text(timeout=30_000) == line  # at the field too
    assert not out.exists()

    box(page, "opt-resize_lora-new_rank").fill("2")
    page.locator("#tool-run-resize_lora").click()
    status = wait_value(page, "tool-status-resize_lora", ("done", "failed"))
    assert status.startswith("done: exit code 0"), (status, box(page, "tool-output-resize_lora").input_value())
    assert "--new_rank 2" in box(page, "tool-cmd-resize_lora").input_value()
    assert page.locator(".field-error-note").count() == 0
    downs = [t for k, t in load_file(out).items() if k.endswith("lora_down.weight")]
    assert downs and all(t.shape[0] == 2 for t in downs)
    page.locator("#tool-files-resize_lora td[aria-label='small.safetensors']").wait_for(timeout=30_000)

    page.get_by_role("tab", name="Check", exact=True).click()
    box(page, "opt-check_lora_weights-file").fill(str(out))
    page.locator("#tool-run-check_lora_weights").click()
    status = wait_value(page, "tool-status-check_lora_weights", ("done", "failed"))
    assert status.startswith("done: exit code 0"), status
    assert f"summary: {len(downs)} modules" in box(page, "tool-output-check_lora_weights").input_value()
    table = page.locator("#tool-check-table")
    page.wait_for_function("document.querySelector('#tool-check-table').innerText.includes('lora_te_')",
                           timeout=30_000)
    text = table.inner_text()  # rows scrolled out of the table's view may be left out: check those shown
    names = {k.split(".")[0] for k in load_file(out)}
    shown = [n for n in names if f"\n{n}\n" in text]
    assert len(shown) >= 10 and all(f"\n{n}\n2\n2\n" in text for n in shown)  # rank 2, alpha 2


def test_generate_shows_an_image_made_with_a_lora(gui_page, gui_server, tiny_checkpoints, tmp_path):  # noqa: ANN001
    from lora_helpers import make_lora
    from PIL import Image

    page = gui_page
    made = gui_server["out"] / "generate"
    lora = make_lora(tmp_path / "gen.safetensors", "sd1", dim=4)
    tab(page, "Generate")
    box(page, "opt-gen_img_diffusers-ckpt").fill(str(tiny_checkpoints["sd1"]))
    box(page, "opt-gen_img_diffusers-prompt").fill("a red circle")
    box(page, "opt-gen_img_diffusers-steps").fill("0")
    box(page, "gen-loras").fill(f"{lora} 0.7")
    page.locator("#gen-run").click()
    assert wait_value(page, "gen-status", ("not started",), 60)
    assert box(page, "gen-error").input_value() == "error: --steps 0: must be greater than 0"
    assert not list(made.rglob("*.png"))

    box(page, "opt-gen_img_diffusers-steps").fill("2")
    page.locator("#gen-run").click()
    status = wait_value(page, "gen-status", ("done", "failed"))
    assert status.startswith("done: exit code 0"), (status, box(page, "gen-log").input_value())
    page.locator("#gen-gallery img").first.wait_for(timeout=30_000)
    params = box(page, "gen-params").input_value()
    assert "a red circle" in params and "Steps: 2" in params and "LoRAs: gen.safetensors:0.7" in params
    [png] = list(made.rglob("*.png"))
    with Image.open(png) as im:
        assert im.text["networks"] == "gen.safetensors:0.7" and im.size == (64, 64)

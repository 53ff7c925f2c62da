"""library.prompts: the prompt-line options and prompt files shared by generation and training samples."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from library.errors import ToolkitError  # noqa: E402
from library.generate.schedulers import SAMPLERS, make_scheduler  # noqa: E402
from library.prompts import PromptSpec, load_prompt_file, parse_prompt_line  # noqa: E402


def test_line_options() -> None:
    spec = parse_prompt_line("a cat, best quality --n blurry, lowres --W 768 --h 512 --d 42 --s 28 --l 7 --ss Euler_A")
    assert spec.prompt == "a cat, best quality" and spec.negative_prompt == "blurry, lowres"
    assert (spec.width, spec.height, spec.seed, spec.steps, spec.scale) == (768, 512, 42, 28, 7.0)
    assert spec.sampler == "euler_a"
    many = parse_prompt_line("x --d 1,2,3 --am 0.5,1 --t 0.3 --s 1000 --cn canny")
    assert many.seeds == [1, 2, 3] and many.network_muls == [0.5, 1.0] and many.strength == 0.3
    assert many.steps == 1000 and many.extra == {"cn": "canny"}  # sd-scripts' options not used here: warned
    assert parse_prompt_line("just a prompt") == PromptSpec("just a prompt")


def test_bad_option_or_value_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    bad = {"--w wide": "--w 'wide': not a number", "--s -1": "--s '-1': must be between 1 and 1000",
           "--s 5000": "--s '5000': must be between 1 and 1000", "--l nan": "--l 'nan': must be a finite number",
           "--t 2": "--t '2': must be between 0 and 1", "--x 3": "--x '3': unknown prompt option",
           "--am 1,inf": "--am '1,inf': must be a finite number"}
    for option, problem in bad.items():
        f = tmp_path / "p.txt"
        f.write_text(f"# header\na cat --h 64\n\na dog {option}\n", encoding="utf-8")
        with pytest.raises(ToolkitError) as e:
            load_prompt_file(f)
        assert str(e.value).startswith(f"{f}: line 4: prompt option {problem}"), str(e.value)
    with pytest.raises(ToolkitError, match="^--prompt: prompt option --s '0'"):
        parse_prompt_line("a cat --s 0", "--prompt")


def test_prompt_files(tmp_path: Path) -> None:
    txt = tmp_path / "p.txt"
    txt.write_text("# comment\n\na cat --d 1\n  \nb dog --n x\n", encoding="utf-8")
    assert [s.prompt for s in load_prompt_file(txt)] == ["a cat", "b dog"]
    toml = tmp_path / "p.toml"
    toml.write_text('[prompt]\nwidth = 640\nsample_steps = 20\nnegative_prompt = "bad"\n'
                    '[[prompt.subset]]\nprompt = "one"\nseed = 5\n'
                    '[[prompt.subset]]\nprompt = "two"\nwidth = 320\nsample_sampler = "heun"\n')
    one, two = load_prompt_file(toml)
    assert (one.prompt, one.width, one.steps, one.seed, one.negative_prompt) == ("one", 640, 20, 5, "bad")
    assert (two.width, two.sampler) == (320, "heun")
    js = tmp_path / "p.json"
    js.write_text('["a --d 3", {"prompt": "b", "scale": 4, "height": 256}]')
    a, b = load_prompt_file(js)
    assert a.seed == 3 and (b.scale, b.height) == (4.0, 256)


def test_prompt_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match="not found"):
        load_prompt_file(tmp_path / "missing.txt")
    bad = tmp_path / "bad.toml"
    bad.write_text("[prompt\n")
    with pytest.raises(ToolkitError, match="bad.toml"):
        load_prompt_file(bad)
    nokey = tmp_path / "nokey.json"
    nokey.write_text('[{"width": 5}]')
    with pytest.raises(ToolkitError, match="no 'prompt'"):
        load_prompt_file(nokey)


def test_every_sampler_builds_with_both_predictions() -> None:
    for name in SAMPLERS:
        assert make_scheduler(name).config.prediction_type == "epsilon"
        assert make_scheduler(name.upper(), v_parameterization=True).config.prediction_type == "v_prediction"
    with pytest.raises(ToolkitError, match="unknown sampler"):
        make_scheduler("plms2")

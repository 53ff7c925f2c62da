"""From a command line to a checked, typed configuration: parse (with `--config_file` as defaults), refuse what this
toolkit does not do or what cannot work, note what it ignores, and hand back the config. No heavy imports here."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

from library.errors import ToolkitError
from library.options.generate import GEN_EXCLUSIVE, GenerationConfig, build_gen_parser, gen_options, generation_config
from library.options.parser import OptionParser, build_option_parser
from library.options.spec import GEN, IGNORED, IMPLEMENTED, REFUSED, TRAIN, Option
from library.options.train import (
    EXCLUSIVE,
    NOT_SETTINGS,
    TrainConfig,
    apply_aliases,
    config_from_values,
    cross_checks,
    train_options,
)

log = logging.getLogger(__name__)

TRAIN_DESCRIPTION = """Train a LoRA / LoCon network for Stable Diffusion (sd-scripts' command line and config files).

    python train_network.py --config_file examples/quickstart.toml
    accelerate launch --multi_gpu --num_processes 2 train_network.py --config_file my.toml

Options marked REFUSED are accepted so sd-scripts configs parse, but stop the run when set;
options marked ignored have no effect here."""


def build_parser(script: str = TRAIN, description: str | None = None) -> OptionParser:
    """The parser of `script` (train_network, sdxl_train_network or gen_img_diffusers) from the declarations."""
    if script == GEN:
        return build_gen_parser(description)
    text = description or TRAIN_DESCRIPTION.replace("train_network.py", f"{script}.py")
    return build_option_parser(train_options(script), script, text)


def _shown(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def _finite(value: object) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    return all(math.isfinite(v) for v in values if isinstance(v, float))


def check_values(options: Iterable[Option], values: dict, script: str,
                 exclusive: Sequence[tuple[str, str]] = ()) -> None:
    """Refuse exclusive pairs, refused options given a value, and values their declaration's check rejects."""
    for a, b in exclusive:
        if values.get(a) and values.get(b):
            raise ToolkitError(f"--{a} and --{b} exclude each other: give one of them")
    for o in options:
        status, why = o.status_in(script)
        value = values.get(o.name)
        if status == REFUSED and o.is_set(value):
            raise ToolkitError(f"--{o.name}: {why}")
        if not _finite(value):  # no option means anything with NaN or Inf (argparse and TOML both accept them)
            raise ToolkitError(f"--{o.name} {_shown(value)}: must be a finite number")
        if status == IMPLEMENTED and o.check is not None and value is not None:
            problem = o.check(value)
            if problem:
                raise ToolkitError(f"--{o.name} {_shown(value)}: {problem}")


def report_ignored(options: Iterable[Option], values: dict, script: str) -> None:
    """One log line per ignored option that was given a value."""
    for o in options:
        status, why = o.status_in(script)
        if status == IGNORED and o.is_set(values.get(o.name)):
            log.info("--%s: ignored (%s)", o.name, why)


def parse_values(parser: OptionParser, argv: Sequence[str] | None) -> dict:
    """Option values of a command line, `--config_file` values standing in for the defaults."""
    from library.options.configfile import read_config_file

    ns = parser.parse_args(argv)
    if getattr(ns, "config_file", None) and not getattr(ns, "output_config", False):
        parser.set_defaults(**read_config_file(parser, ns.config_file, skip=NOT_SETTINGS))
        ns = parser.parse_args(argv)
    return vars(ns)


def settings_to_write(options: Iterable[Option], values: dict) -> dict:
    """The values of a command line that differ from their defaults, as `--output_config` writes them."""
    return {o.name: values[o.name] for o in options if o.name not in NOT_SETTINGS and values.get(o.name) is not None
            and values[o.name] != o.default}


def parse_training_args(argv: Sequence[str] | None = None, script: str = TRAIN) -> TrainConfig | None:
    """Parse and check a training command line; None when it only wrote `--output_config`."""
    from library.cli import setup_logging
    from library.options.configfile import write_config_file

    parser = build_parser(script)
    values = parse_values(parser, argv)
    setup_logging(values["verbosity"])
    options = train_options(script)
    check_values(options, values, script, EXCLUSIVE)
    cfg = config_from_values(values)
    problems = cross_checks(cfg)
    if problems:
        raise ToolkitError(problems[0])
    if values["output_config"]:
        if not values["config_file"]:
            raise ToolkitError("--output_config: needs --config_file (the file to write)")
        log.info("wrote %s", write_config_file(settings_to_write(options, values), values["config_file"]))
        return None
    report_ignored(options, values, script)
    return apply_aliases(cfg)


def parse_generation_args(argv: Sequence[str] | None = None) -> GenerationConfig:
    """Parse and check a gen_img_diffusers.py command line."""
    from library.cli import setup_logging

    parser = build_parser(GEN)
    values = parse_values(parser, argv)
    setup_logging(values["verbosity"])
    if not values["ckpt"]:
        raise ToolkitError("--ckpt is required (a .safetensors/.ckpt checkpoint or a Diffusers folder)")
    check_values(gen_options(), values, GEN, GEN_EXCLUSIVE)
    return generation_config(values)

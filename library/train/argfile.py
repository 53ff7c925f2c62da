"""`--config_file`: a TOML of command-line arguments (sd-scripts' format). Tables are flattened into one set of
option values that replace the parser defaults, so anything given on the command line still wins.
`--output_config` writes the non-default arguments of a command line to such a file."""

from __future__ import annotations

import argparse
import difflib
import logging
from collections.abc import Sequence
from pathlib import Path

import toml

from library.errors import ToolkitError
from library.files import atomic_path

log = logging.getLogger(__name__)


def _flatten(data: dict) -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(value)
        else:
            out[key] = value
    return out


def _coerce(action: argparse.Action, value: object, key: str, path: Path) -> object:
    """Give a TOML value the type the option's parser would (a string "1e-4" for a float option, etc.)."""
    if value is None:
        return None
    many = action.nargs in ("*", "+") or (isinstance(action.nargs, int) and action.nargs > 0)
    if many:
        items = value if isinstance(value, list) else [value]
        return [_coerce_one(action, v, key, path) for v in items]
    if isinstance(value, list):
        raise ToolkitError(f"{path}: {key} takes one value, got a list")
    return _coerce_one(action, value, key, path)


def _coerce_one(action: argparse.Action, value: object, key: str, path: Path) -> object:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ToolkitError(f"{path}: {key} must be true or false, got {value!r}")
        return value
    if action.type is not None and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        try:
            value = action.type(str(value))  # the same conversion the command line applies
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise ToolkitError(f"{path}: {key} = {value!r}: {e}") from None
    if action.choices is not None and value not in action.choices:
        raise ToolkitError(f"{path}: {key} = {value!r}: choose from {', '.join(map(str, action.choices))}")
    return value


def read_config_file(parser: argparse.ArgumentParser, path: str | Path) -> dict:
    """Option values from a config TOML, checked against the parser (a typo with a close match is an error)."""
    path = Path(path)
    if not path.exists() and path.suffix != ".toml":
        path = path.with_name(path.name + ".toml")
    if not path.is_file():
        raise ToolkitError(f"--config_file {path}: file not found")
    try:
        values = _flatten(toml.loads(path.read_text(encoding="utf-8")))
    except (toml.TomlDecodeError, UnicodeDecodeError) as e:
        raise ToolkitError(f"--config_file {path}: not a valid TOML file: {e}") from None
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", argparse.SUPPRESS)}
    out = {}
    for key, value in values.items():
        if key not in actions:
            close = difflib.get_close_matches(key, list(actions), n=1, cutoff=0.8)
            if close:
                raise ToolkitError(f"{path}: unknown option {key!r} (did you mean {close[0]!r}?)")
            log.warning("%s: %r is not an option of this script; ignored", path, key)
            continue
        if key in ("config_file", "output_config"):
            continue
        out[key] = _coerce(actions[key], value, key, path)
    return out


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse `argv`; values from `--config_file` become the defaults the command line overrides."""
    args = parser.parse_args(argv)
    if args.config_file and not getattr(args, "output_config", False):  # with --output_config it is the output
        parser.set_defaults(**read_config_file(parser, args.config_file))
        args = parser.parse_args(argv)
    return args


def write_config_file(parser: argparse.ArgumentParser, args: argparse.Namespace, path: str | Path) -> Path:
    """Write the arguments that differ from the parser defaults as a flat TOML (for `--config_file`)."""
    path = Path(path)
    if path.suffix != ".toml":
        path = path.with_name(path.name + ".toml")
    values = {}
    for action in parser._actions:
        if action.dest in ("help", "config_file", "output_config", argparse.SUPPRESS):
            continue
        value = getattr(args, action.dest, None)
        if value is not None and value != action.default:
            values[action.dest] = value
    with atomic_path(path) as tmp:
        tmp.write_text(toml.dumps(values), encoding="utf-8")
    return path

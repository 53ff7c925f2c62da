"""`--config_file`: a TOML of command-line options (sd-scripts' format). Tables are flattened into one set of option
values that replace the parser defaults, so anything given on the command line still wins. `--output_config` writes
the options of a command line that differ from their defaults to such a file, never over an existing one."""

from __future__ import annotations

import argparse
import difflib
import logging
from pathlib import Path

import toml

from library.errors import ToolkitError

log = logging.getLogger(__name__)


def _flatten(data: dict, path: Path) -> dict:
    """One level of tables folded into one set of options; a key set in two places is refused (which one would
    win is not something a reader of the file can see)."""
    out: dict = {}
    where: dict[str, str] = {}
    if isinstance(data.get("datasets"), list):
        raise ToolkitError(f"--config_file {path}: this is a dataset config ([[datasets]] tables); give it with "
                           "--dataset_config")
    for key, value in data.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        table = f"[{key}]" if isinstance(value, dict) else "the top level"
        for name, v in items:
            if name in out:
                raise ToolkitError(f"--config_file {path}: {name} is set in {where[name]} and in {table}; keep one")
            out[name], where[name] = v, table
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


def config_path(path: str | Path) -> Path:
    """`x` -> `x.toml` as sd-scripts does, unless `x` exists as given."""
    path = Path(path)
    if not path.exists() and path.suffix != ".toml":
        path = path.with_name(path.name + ".toml")
    return path


def read_config_file(parser: argparse.ArgumentParser, path: str | Path, skip: tuple[str, ...] = ()) -> dict:
    """Option values from a config TOML, checked against the parser (a typo with a close match is an error)."""
    path = config_path(path)
    if not path.is_file():
        raise ToolkitError(f"--config_file {path}: file not found")
    try:
        data = toml.loads(path.read_text(encoding="utf-8"))
    except (toml.TomlDecodeError, UnicodeDecodeError) as e:
        raise ToolkitError(f"--config_file {path}: not a valid TOML file: {e}") from None
    values = _flatten(data, path)
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", argparse.SUPPRESS)}
    out = {}
    for key, value in values.items():
        if key not in actions:
            close = difflib.get_close_matches(key, list(actions), n=1, cutoff=0.8)
            if close:
                raise ToolkitError(f"{path}: unknown option {key!r} (did you mean {close[0]!r}?)")
            log.warning("%s: %r is not an option of this script; ignored", path, key)
            continue
        if key in skip:
            continue
        out[key] = _coerce(actions[key], value, key, path)
    return out


def write_config_file(values: dict, path: str | Path) -> Path:
    """Write option values as a flat TOML for `--config_file`; an existing file is never replaced."""
    path = Path(path)
    if path.suffix != ".toml":
        path = path.with_name(path.name + ".toml")
    if path.exists():
        raise ToolkitError(f"--config_file {path}: already exists; --output_config never overwrites a file "
                           "(remove it or name a new file)")
    from library.files import atomic_path  # imports torch: only when a file is written

    with atomic_path(path) as tmp:
        tmp.write_text(toml.dumps(values), encoding="utf-8")
    return path

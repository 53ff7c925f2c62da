"""`--network_args key=value`: checked before any model loads, whatever network module reads them.

A network module lists the names it reads in `KNOWN_ARGS` (networks.lora, networks.dylora, and any module that
follows the convention); a name it does not read that is close to one it does is a typo and stops the run with
the closest name, other unread names get one warning from the module itself. Values are checked against the
module's declarations (`library/options/network_args.py`; for an undeclared module, the common names networks.lora
declares: ranks, alphas, dropouts, LoRA+ ratios), so `conv_dim=abc` or `module_dropout=2` is one line at parse
time instead of a traceback at the first `backward`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import ModuleType

from library.errors import ToolkitError
from library.options.network_args import LORA, network_arg_options, value_problem


def parse_network_args(items: list[str] | None) -> dict[str, str]:
    """`key=value` words to a dict (later words win, as in sd-scripts)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ToolkitError(f"--network_args {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def check_network_args(module: ModuleType, args: Mapping[str, str]) -> None:
    """Refuse a misspelled name (close to one the module reads) and a value outside its range, in one line."""
    known = getattr(module, "KNOWN_ARGS", None)
    name = module.__name__
    declared = {o.name: o for o in network_arg_options(name) or network_arg_options(LORA)}
    for key, value in args.items():
        if known is not None and key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
            if close:
                raise ToolkitError(f"--network_args {key}={value}: {name} has no {key!r} (did you mean {close[0]}?)")
            continue
        o = declared.get(key)
        if o is not None and value not in ("", "None"):
            problem = value_problem(o, value)
            if problem:
                raise ToolkitError(f"--network_args {key}={value}: {problem}")

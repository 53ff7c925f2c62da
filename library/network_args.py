"""`--network_args key=value`: checked before any model loads, whatever network module reads them.

A network module lists the names it reads in `KNOWN_ARGS` (networks.lora, networks.dylora, and any module that
follows the convention); a name it does not read that is close to one it does is a typo and stops the run with
the closest name, other unread names get one warning from the module itself. The values of the common names
(ranks, alphas, dropouts, LoRA+ ratios, the DyLoRA unit) are checked here for every module, so `conv_dim=abc` or
`module_dropout=2` is one line at parse time instead of a traceback at the first `backward`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from types import ModuleType

from library.errors import ToolkitError


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("not finite")
    return value


def _count(low: int) -> Callable[[str], str | None]:
    def check(text: str) -> str | None:
        try:
            value = _number(text)
        except ValueError:
            return "expected a whole number"
        if value != int(value):
            return "expected a whole number"
        return None if value >= low else f"must be at least {low}"
    return check


def _real(low: float, high: float, low_open: bool = False, high_open: bool = False,
          why: str = "") -> Callable[[str], str | None]:
    def check(text: str) -> str | None:
        try:
            value = _number(text)
        except ValueError:
            return "expected a finite number"
        if (value <= low if low_open else value < low) or (value >= high if high_open else value > high):
            lo, hi = "(" if low_open else "[", ")" if high_open else "]"
            return f"must be in {lo}{low:g}, {high:g}{hi}{why}"
        return None
    return check


_DROPOUT = _real(0, 1, high_open=True, why=" (the share of values dropped; 1 would drop all of them)")
_LORAPLUS = _real(0, math.inf, low_open=True, high_open=True, why=" (the up factors' lr is the lr times this)")
# value checks of the names several network modules read; "None" (sd-scripts configs write it) means not given
VALUE_CHECKS: dict[str, Callable[[str], str | None]] = {
    "conv_dim": _count(0), "conv_alpha": _real(0, math.inf, high_open=True), "unit": _count(1),
    "dropout": _DROPOUT, "rank_dropout": _DROPOUT, "module_dropout": _DROPOUT,
    "loraplus_lr_ratio": _LORAPLUS, "loraplus_unet_lr_ratio": _LORAPLUS, "loraplus_text_encoder_lr_ratio": _LORAPLUS,
}


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
    for key, value in args.items():
        if known is not None and key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
            if close:
                raise ToolkitError(f"--network_args {key}={value}: {name} has no {key!r} (did you mean {close[0]}?)")
            continue
        check = VALUE_CHECKS.get(key)
        if check is not None and value not in ("", "None"):
            problem = check(value)
            if problem:
                raise ToolkitError(f"--network_args {key}={value}: {problem}")

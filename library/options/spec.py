"""What an option declaration is: one dataclass field per option whose metadata carries its command-line form,
help text, status and checks. Parsers, config files, the dataset schema, docs and metadata are all built from these.

Kept free of torch/diffusers imports so `-h` answers at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

IMPLEMENTED, REFUSED, IGNORED = "implemented", "refused", "ignored"
TRAIN, SDXL_TRAIN, GEN = "train_network", "sdxl_train_network", "gen_img_diffusers"
TRAIN_SCRIPTS = (TRAIN, SDXL_TRAIN)
# where a key may appear in a dataset TOML
GENERAL, DATASET, SUBSET = "general", "dataset", "subset"
ALL_LEVELS = (GENERAL, DATASET, SUBSET)

Check = Callable[[object], "str | None"]  # returns what is wrong with a value, or None


@dataclass(frozen=True)
class Option:
    """One option: its name (the dataclass field and `--name`), how the command line reads it, and its status.

    `type` converts one command-line word (None: a flag, `store_true`); `status` is implemented, refused (given a
    non-default value the run stops with `why`) or ignored (accepted; one log line says `why`). A `positional`
    option is a bare word (`FILE`), not `--name`; a `required` one must be given."""

    name: str
    type: Callable[[str], object] | None
    default: object
    help: str
    group: str = ""
    status: str = IMPLEMENTED
    why: str = ""
    choices: tuple | None = None
    nargs: str | None = None
    aliases: tuple[str, ...] = ()
    check: Check | None = None
    scripts: tuple[str, ...] = TRAIN_SCRIPTS
    per_script: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    dataset: tuple[str, ...] = ()
    dataset_key: str | None = None
    meta: str | None = None
    metavar: str | None = None
    positional: bool = False
    required: bool = False

    @property
    def flag(self) -> bool:
        return self.type is None

    def status_in(self, script: str) -> tuple[str, str]:
        """(status, why) of this option in `script`."""
        return self.per_script.get(script, (self.status, self.why))

    def is_set(self, value: object) -> bool:
        """Whether `value` differs from "not given" (the default, None, False or an empty list)."""
        return value not in (None, False, [], ()) and value != self.default

    def describe_default(self) -> str:
        if self.flag or self.nargs == "count" or self.default in (None, [], (), ""):
            return ""
        return str(self.default)


def opt(type: Callable[[str], object] | None, default: object, help: str, **kw: object) -> object:  # noqa: A002
    """A dataclass field declaring one option (see `Option` for the keywords)."""
    spec = {"type": type, "default": default, "help": help, **kw}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"option": spec})
    return field(default=default, metadata={"option": spec})


def flag(help: str, **kw: object) -> object:  # noqa: A002
    """A dataclass field declaring an on/off option (false unless given)."""
    return opt(None, False, help, **kw)


def refused(why: str) -> dict:
    """Keywords for an option accepted for compatibility that stops the run when given."""
    return {"status": REFUSED, "why": why}


def ignored(why: str) -> dict:
    """Keywords for an option accepted for compatibility that has no effect here."""
    return {"status": IGNORED, "why": why}


def options_of(cls: type) -> Iterator[Option]:
    """The options declared by a group dataclass (its `GROUP` is their help group)."""
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("option")
        if spec is not None:
            yield Option(name=f.name, group=getattr(cls, "GROUP", ""), **spec)


# ---- value checks: each returns what is wrong, in the user's words, or None -------------------------------------
def positive(value: object) -> str | None:
    values = value if isinstance(value, (list, tuple)) else [value]
    return None if all(v > 0 for v in values) else "must be greater than 0"


def non_negative(value: object) -> str | None:
    values = value if isinstance(value, (list, tuple)) else [value]
    return None if all(v >= 0 for v in values) else "must not be negative"


def quantile(value: object) -> str | None:
    """A `--clamp_quantile`: a share of the values, in (0, 1] (1: no clamp)."""
    return None if 0 < value <= 1 else "must be in (0, 1] (1 or omitted: no clamp)"  # type: ignore[operator]


def interval(low: float, high: float, low_open: bool = False, high_open: bool = False, why: str = "") -> Check:
    """A check for `low <= value <= high`, either end open: "must be in [0, 1)" and `why` when outside."""
    def check(value: object) -> str | None:
        below = value <= low if low_open else value < low  # type: ignore[operator]
        above = value >= high if high_open else value > high  # type: ignore[operator]
        if below or above:
            return f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}{why}"
        return None
    return check


def between(low: float, high: float) -> Check:
    def check(value: object) -> str | None:
        return None if low <= value <= high else f"must be between {low:g} and {high:g}"  # type: ignore[operator]
    return check


def int_or_float(value: str) -> int | float | str:
    """sd-scripts' int_or_float: `10` -> 10, `0.1` -> 0.1, `5%` -> "5%" (a ratio)."""
    value = str(value)
    if value.endswith("%"):
        float(value[:-1])
        return value
    f = float(value)
    return int(f) if f >= 1 and f == int(f) else f


def steps_or_ratio(value: object) -> str | None:
    if isinstance(value, str):
        return None if 0 <= float(value[:-1]) <= 100 else "a percentage must be between 0% and 100%"
    return None if value >= 0 else "must not be negative"  # type: ignore[operator]

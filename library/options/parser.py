"""argparse parsers built from the option declarations, with one-line errors: an unknown option names the closest
known one, a bad value names its option, and nothing dumps the usage."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterable, Sequence

from library.errors import ToolkitError
from library.options.spec import IGNORED, REFUSED, Option

_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


class OptionParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ToolkitErrors (one line, exit 2 through `library.cli.run_main`);
    `usage_hint`, when set, ends the unknown-option error (the tools' one-line usage)."""

    usage_hint: str | None = None

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ToolkitError(message.removeprefix("argument "))

    def parse_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
                   ) -> argparse.Namespace:  # type: ignore[override]
        words = list(sys.argv[1:] if args is None else args)
        unknown = self.first_unknown_option(words)
        if unknown is not None:  # before argparse, whose "required" or positional errors would hide the typo
            raise ToolkitError(self.unknown_message(unknown))
        ns, extra = self.parse_known_args(words, namespace)
        if extra:
            raise ToolkitError(self.unknown_message(extra[0]))
        return ns

    def known_names(self) -> list[str]:
        return [s for a in self._actions for s in a.option_strings]

    def first_unknown_option(self, words: Sequence[str]) -> str | None:
        """The first word argparse would read as an option that names none of ours (abbreviations count as known
        where the parser allows them); values such as `-1` or `"a --n b"` are not options, as in argparse."""
        known = set(self.known_names())
        for word in words:
            if word == "--":
                return None
            if not word.startswith("-") or word == "-" or " " in word or _NUMBER.match(word):
                continue
            name = word.split("=", 1)[0]
            if name in known or (not name.startswith("--") and name[:2] in known):  # -vv, -o=x, -ofolder
                continue
            if self.allow_abbrev and name.startswith("--") and any(k.startswith(name) for k in known):
                continue
            return name
        return None

    def unknown_message(self, word: str) -> str:
        if not word.startswith("-"):
            return f"unexpected argument {word!r} (options start with --)"
        name = word.split("=", 1)[0]
        close = difflib.get_close_matches(name, self.known_names(), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else " (see -h)"
        usage = f"; usage: {self.usage_hint}" if self.usage_hint else ""
        return f"unknown option {name}{hint}{usage}"


def help_text(o: Option, script: str) -> str:
    """The help of an option as -h shows it: the text, the default, and the status when it is not implemented."""
    text = o.help
    default = o.describe_default()
    if default and "[" not in text:
        text += f" [{default}]"
    status, why = o.status_in(script)
    if status == REFUSED:
        text += f" (REFUSED here: {why})"
    elif status == IGNORED:
        text += f" (ignored here: {why})"
    return text.replace("%", "%%")


def add_option(group: argparse._ArgumentGroup, o: Option, script: str) -> None:
    """Add one declared option to a parser group."""
    if o.positional:
        group.add_argument(o.name, type=o.type, nargs=o.nargs, choices=o.choices, metavar=o.metavar,
                           help=help_text(o, script))
        return
    if o.nargs == "count":
        group.add_argument(*o.aliases, dest=o.name, action="count", default=o.default, help=help_text(o, script))
        return
    names = (f"--{o.name}", *o.aliases)
    kw: dict = {"dest": o.name, "default": o.default, "help": help_text(o, script)}
    if o.required:
        kw["required"] = True
    if o.flag:
        group.add_argument(*names, action="store_true", **kw)
        return
    kw.update(type=o.type, choices=o.choices, nargs=o.nargs, metavar=o.metavar)
    if o.metavar is None and o.choices is None:
        kw["metavar"] = {int: "N", float: "X"}.get(o.type, "TEXT")  # type: ignore[arg-type]
    group.add_argument(*names, **kw)


def build_option_parser(options: Iterable[Option], script: str, description: str | None = None,
                        epilog: str | None = None, usage: str | None = "%(prog)s [options]",
                        allow_abbrev: bool = False, prog: str | None = None) -> OptionParser:
    """A parser of `options`, one help group per declaration group, in the order given (`usage` None: argparse
    writes it from the options)."""
    p = OptionParser(prog=prog or f"{script}.py", usage=usage, description=description, epilog=epilog,
                     allow_abbrev=allow_abbrev,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for o in options:
        if o.group not in groups:
            groups[o.group] = p.add_argument_group(o.group)
        add_option(groups[o.group], o, script)
    return p


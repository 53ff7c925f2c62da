"""argparse parsers built from the option declarations, with one-line errors: an unknown option names the closest
known one, a bad value names its option, and nothing dumps the usage."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterable, Sequence

from library.errors import ToolkitError
from library.options.spec import IGNORED, REFUSED, Option


class OptionParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ToolkitErrors (one line, exit 2 through `library.cli.run_main`)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ToolkitError(message.removeprefix("argument "))

    def parse_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
                   ) -> argparse.Namespace:  # type: ignore[override]
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            raise ToolkitError(self.unknown_message(extra[0]))
        return ns

    def known_names(self) -> list[str]:
        return [s for a in self._actions for s in a.option_strings]

    def unknown_message(self, word: str) -> str:
        if not word.startswith("-"):
            return f"unexpected argument {word!r} (options start with --)"
        name = word.split("=", 1)[0]
        close = difflib.get_close_matches(name, self.known_names(), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else " (see -h)"
        return f"unknown option {name}{hint}"


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
    if o.nargs == "count":
        group.add_argument(*o.aliases, dest=o.name, action="count", default=o.default, help=help_text(o, script))
        return
    names = (f"--{o.name}", *o.aliases)
    kw: dict = {"dest": o.name, "default": o.default, "help": help_text(o, script)}
    if o.flag:
        group.add_argument(*names, action="store_true", **kw)
        return
    kw.update(type=o.type, choices=o.choices, nargs=o.nargs, metavar=o.metavar)
    if o.metavar is None and o.choices is None:
        kw["metavar"] = {int: "N", float: "X"}.get(o.type, "TEXT")  # type: ignore[arg-type]
    group.add_argument(*names, **kw)


def build_option_parser(options: Iterable[Option], script: str, description: str | None = None,
                        epilog: str | None = None) -> OptionParser:
    """A parser of `options`, one help group per declaration group, in the order given."""
    p = OptionParser(prog=f"{script}.py", usage="%(prog)s [options]", description=description, epilog=epilog,
                     allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for o in options:
        if o.group not in groups:
            groups[o.group] = p.add_argument_group(o.group)
        add_option(groups[o.group], o, script)
    return p


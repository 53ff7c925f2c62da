"""Shared command-line plumbing: logging levels, precision names, and the error-to-one-line wrapper."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from library.errors import ToolkitError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_DTYPES = {  # names of torch dtypes (torch is imported only when one is needed)
    "float": "float32", "fp32": "float32", "float32": "float32",
    "fp16": "float16", "float16": "float16", "half": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
}


def str_to_dtype(name: str | None, default: torch.dtype | None = None) -> torch.dtype | None:
    """`float`/`fp16`/`bf16` (sd-scripts' precision names) to a torch dtype; None gives `default`."""
    if name is None or name == "none":
        return default
    import torch

    try:
        return getattr(torch, _DTYPES[name.lower()])
    except KeyError:
        raise ToolkitError(f"unknown precision {name!r}: use float, fp16 or bf16") from None


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """`-v` raises the log detail (INFO is the default; -v gives DEBUG)."""
    parser.add_argument("-v", "--verbose_log", dest="verbosity", action="count", default=0,
                        help="more log detail (-v: debug)")


_NOISY = ("diffusers", "transformers", "accelerate", "PIL", "bitsandbytes", "httpx", "urllib3", "huggingface_hub",
          "peft", "py.warnings")
MAX_LINE = 400  # a longer log message is cut to its first line: a page of library warning must not bury the error


class _Shorten(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if len(text) > MAX_LINE:
            record.msg, record.args = text.splitlines()[0][:MAX_LINE] + " [...]", ()
        return True


def setup_logging(verbosity: int = 0) -> None:
    """The toolkit's own messages at INFO (-v: DEBUG). Libraries' messages and Python warnings (torch, diffusers,
    peft) only when they are errors, unless -v (warnings) or -vv (everything): their noise must not precede or
    bury the one line that says what went wrong."""
    level = logging.DEBUG if verbosity >= 1 else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", force=True)
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Shorten())
    third_party = {0: logging.ERROR, 1: logging.WARNING}.get(verbosity, logging.DEBUG)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(third_party)
    # bitsandbytes warns on import that an optional hub-fetched CPU kernel is absent; nothing is fetched here
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR if verbosity < 2 else logging.DEBUG)


def run_main(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run a script's main; a ToolkitError becomes `error: <message>` on stderr and exit code 2."""
    try:
        main(argv)
    except ToolkitError as e:
        _close_progress_bars()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `script | head` closed the pipe: the reader has what it wanted
        _silence_stdout()
        return 0
    except OSError as e:  # the system refused a read or write mid-run (disk full, permissions changed, ...)
        _close_progress_bars()
        where = e.filename if e.filename is not None else "I/O"
        print(f"error: {where}: {e.strerror or e}", file=sys.stderr)
        return 2
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    return 0


def _close_progress_bars() -> None:
    """End the line of a progress bar left open by the failure, so the message starts a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not report the closed pipe."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass

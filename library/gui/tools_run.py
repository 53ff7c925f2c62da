"""Running a toolkit script from the UI: the argv of a form (positional words first), the one-line error of a bad
command line before anything starts, and the script itself as a subprocess (argv, never a shell) whose output is
streamed back. No gradio here, so the same code is tested without a browser."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from library.errors import ToolkitError
from library.gui.forms import OptionForm, form_argv, split_words

REFRESH_S = 1.0  # how often a running script's output reaches the page


def positional_words(form: OptionForm, values: Mapping[str, object]) -> list[str]:
    """The bare words of the form's positional fields, in declaration order (quotes group words in a several-value
    field, as in a shell, though no shell runs)."""
    words: list[str] = []
    for name, f in form.fields.items():
        if not f.option.positional:
            continue
        text = str(values.get(name) or "").strip()
        if f.option.nargs in ("*", "+"):
            words += split_words(text, name)
        elif text:
            words.append(text)
    return words


def script_argv(form: OptionForm, values: Mapping[str, object]) -> list[str]:
    """The command line of a tool form: positional words, then `--name value` for every field changed from its
    default (positionals first, so that a several-value option cannot swallow them)."""
    options = {k: v for k, v in values.items() if k in form.fields and not form.fields[k].option.positional}
    return [*positional_words(form, values), *form_argv(form, options)]


def error_line(output: str) -> str:
    """The script's `error: ...` line (its last one), or '' when it printed none."""
    lines = [ln for ln in output.replace("\r", "\n").splitlines() if ln.startswith("error: ")]
    return lines[-1] if lines else ""


@dataclass
class ScriptRun:
    """One finished or running script: what ran, its output so far, its exit code (None while it runs)."""

    argv: list[str]
    output: str = ""
    returncode: int | None = None
    seconds: float = 0.0
    started: float = field(default_factory=time.time)

    @property
    def error(self) -> str:
        return error_line(self.output)

    def status(self) -> str:
        if self.returncode is None:
            return f"running ({self.seconds:.0f} s)"
        word = "done" if self.returncode == 0 else "failed"
        return f"{word}: exit code {self.returncode} after {self.seconds:.1f} s"


def command_text(script: str, argv: list[str]) -> str:
    """The command line as a user would type it (for the preview; it is never run through a shell)."""
    import shlex

    return shlex.join(["python", script, *argv])


def stream_script(root: Path, script: str, argv: list[str]) -> Iterator[ScriptRun]:
    """Run `python <root>/<script> argv...` in `root`; yield the run every REFRESH_S while it works, and once
    more when it ended. Progress bars' carriage returns keep only their last state."""
    run = ScriptRun(list(argv))
    cmd = [sys.executable, str(root / script), *argv]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env)
    chunks: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(proc.stdout, chunks), daemon=True)
    reader.start()
    while proc.poll() is None:
        time.sleep(REFRESH_S)
        run.seconds = time.time() - run.started
        run.output = clean_output(b"".join(chunks).decode(errors="replace"))
        yield run
    reader.join(timeout=5)
    run.seconds = time.time() - run.started
    run.output, run.returncode = clean_output(b"".join(chunks).decode(errors="replace")), proc.returncode
    yield run


@dataclass
class RunStep:
    """One moment of a script started from the page: refused (`error` set, nothing started), starting (`run`
    None), running, or ended (`run.returncode` set)."""

    command: str = ""
    run: ScriptRun | None = None
    error: str = ""


def checked_run(root: Path, script: str, argv_of: Callable[[], list[str]]) -> Iterator[RunStep]:
    """The life of a Tools or Generate run: `argv_of` builds and checks the command line (its ToolkitError is the
    one refused step: the command line's own error text), then the script's steps as `stream_script` gives them."""
    try:
        argv = argv_of()
    except ToolkitError as e:
        yield RunStep(error=f"error: {e}")
        return
    command = command_text(script, argv)
    yield RunStep(command)
    for run in stream_script(root, script, argv):
        yield RunStep(command, run)


def _read_all(stream: object, chunks: list[bytes]) -> None:
    """Collect a pipe's bytes as they come (a thread: the page keeps refreshing while the script is silent)."""
    fd = stream.fileno()  # type: ignore[attr-defined]
    while True:
        piece = os.read(fd, 65536)
        if not piece:
            return
        chunks.append(piece)


def clean_output(text: str) -> str:
    """Console text as a terminal would show it: of each line rewritten with carriage returns, the last state."""
    return "\n".join(line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
                     for line in text.split("\n"))


def new_files(folder: Path, since: float) -> list[Path]:
    """Files under `folder` written at or after `since` (a tool's outputs in the UI's own folder)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.stat().st_mtime >= since - 1)


def run_to_end(root: Path, script: str, argv: list[str]) -> ScriptRun:
    """Run a script to its end (tests, callers that need no streaming)."""
    *_, last = stream_script(root, script, argv)
    return last

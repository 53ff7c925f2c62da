"""Training runs started from the UI: each is the training script in its own process (the same command line a user
types), one at a time per server, the others queued. A run's folder (`<output_root>/runs/<id>/`) holds `run.json`
(argv, state), `log.txt` (the console output) and `progress.jsonl` (the trainer's `--progress_jsonl` feed), so a
run keeps going when the page is closed and reopening the page, or restarting the server, shows it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from library.gui.progress_view import Progress

QUEUED, RUNNING, STOPPING, DONE, STOPPED, FAILED = "queued", "running", "stopping", "done", "stopped", "failed"
FINISHED = (DONE, STOPPED, FAILED)


@dataclass
class Run:
    """One run: its script and argv (without `--progress_jsonl`), where it writes, and how it ended."""

    id: str
    script: str
    argv: list[str]
    output_dir: str
    output_name: str
    status: str = QUEUED
    pid: int | None = None
    returncode: int | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    resumed_from: str | None = None

    def folder(self, runs_dir: Path) -> Path:
        return runs_dir / self.id


class RunManager:
    """Starts, queues, stops and lists the UI's runs. Thread-safe; a watcher thread starts the next queued run
    when the current one ends."""

    def __init__(self, ctx: object, python: str = sys.executable) -> None:
        self.ctx = ctx
        self.python = python
        self.dir = Path(ctx.output_root) / "runs"  # type: ignore[attr-defined]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.procs: dict[str, subprocess.Popen] = {}
        self.runs: dict[str, Run] = {}
        self._progress: dict[str, Progress] = {}
        self._load()
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="run-watcher")
        self._watcher.start()

    # ---- records -------------------------------------------------------------------------------------------
    def _load(self) -> None:
        for meta in sorted(self.dir.glob("*/run.json")):
            try:
                run = Run(**json.loads(meta.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError):
                continue
            if run.status in (RUNNING, STOPPING, QUEUED):  # a server before this one was stopped mid-run
                alive = run.pid is not None and _alive(run.pid) and run.status != QUEUED
                if not alive:
                    run.status = FAILED if run.status != QUEUED else STOPPED
            self.runs[run.id] = run
            self.ctx.served.allow(run.output_dir)  # type: ignore[attr-defined]

    def _save(self, run: Run) -> None:
        folder = run.folder(self.dir)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "run.json.tmp"
        tmp.write_text(json.dumps(asdict(run), indent=1), encoding="utf-8")
        os.replace(tmp, folder / "run.json")

    def folder(self, run_id: str) -> Path:
        return self.dir / run_id

    def list(self) -> list[Run]:
        """All runs, newest first."""
        with self.lock:
            return sorted(self.runs.values(), key=lambda r: r.created, reverse=True)

    def get(self, run_id: str) -> Run | None:
        return self.runs.get(run_id)

    def current(self) -> Run | None:
        """The run in progress, else the newest queued one, else the newest run."""
        runs = self.list()
        for status in ((RUNNING, STOPPING), (QUEUED,)):
            for r in runs:
                if r.status in status:
                    return r
        return runs[0] if runs else None

    # ---- start, stop, resume -------------------------------------------------------------------------------
    def submit(self, script: str, argv: list[str], output_dir: str, output_name: str,
               resumed_from: str | None = None) -> Run:
        """Queue a run (it starts at once when none is running). `argv` must already parse."""
        with self.lock:
            run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{len(self.runs) + 1:03d}"
            run = Run(run_id, script, list(argv), str(Path(self.ctx.workdir, output_dir).resolve()), output_name,
                      resumed_from=resumed_from)
            self.runs[run_id] = run
            self.ctx.served.allow(run.output_dir)  # type: ignore[attr-defined]
            self._save(run)
            self._start_next()
            return run

    def _start_next(self) -> None:
        with self.lock:
            if any(r.status in (RUNNING, STOPPING) for r in self.runs.values()):
                return
            queued = sorted((r for r in self.runs.values() if r.status == QUEUED), key=lambda r: r.created)
            if queued:
                self._launch(queued[0])

    def _launch(self, run: Run) -> None:
        folder = run.folder(self.dir)
        log = open(folder / "log.txt", "ab")  # noqa: SIM115 - the child writes it; closed when it ends
        cmd = [self.python, str(self.ctx.script(f"{run.script}.py")), *run.argv,  # type: ignore[attr-defined]
               "--progress_jsonl", str(folder / "progress.jsonl")]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, cwd=self.ctx.workdir, stdout=log, stderr=subprocess.STDOUT,  # type: ignore
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.close()
        self.procs[run.id] = proc
        run.pid, run.status, run.started = proc.pid, RUNNING, time.time()
        self._save(run)

    def stop(self, run_id: str) -> Run | None:
        """Stop a run as Ctrl-C does: the trainer finishes its step, saves a resumable state and exits. A queued
        run is taken off the queue."""
        with self.lock:
            run = self.runs.get(run_id)
            if run is None:
                return None
            if run.status == QUEUED:
                run.status, run.ended = STOPPED, time.time()
                self._save(run)
            elif run.status == RUNNING and run.id in self.procs:
                self.procs[run.id].send_signal(signal.SIGINT)
                run.status = STOPPING
                self._save(run)
            return run

    def _watch(self) -> None:
        while True:
            time.sleep(0.5)
            with self.lock:
                for run_id, proc in list(self.procs.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    run = self.runs[run_id]
                    run.returncode, run.ended = code, time.time()
                    end = self.progress(run_id).end or {}
                    finished = code == 0 or end.get("status") == "done"  # a stop that came after the last save
                    run.status = DONE if finished else STOPPED if run.status == STOPPING else FAILED
                    del self.procs[run_id]
                    self._save(run)
                self._start_next()

    # ---- what the Runs tab shows --------------------------------------------------------------------------
    def progress(self, run_id: str) -> Progress:
        """The run's progress so far (its feed read on from where the last call stopped)."""
        prog = self._progress.setdefault(run_id, Progress())
        prog.update(self.folder(run_id) / "progress.jsonl")
        return prog

    def log_tail(self, run_id: str, lines: int = 30) -> str:
        """The end of the run's console output (progress-bar redraws collapsed to their last state)."""
        try:
            with open(self.folder(run_id) / "log.txt", "rb") as f:
                f.seek(max(0, f.seek(0, 2) - 20000))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        out = [ln.rsplit("\r", 1)[-1] for ln in text.replace("\r\n", "\n").split("\n")]
        return "\n".join(out[-lines:])

    def error_line(self, run_id: str) -> str | None:
        """The `error: ...` line a failed run ended with, if any."""
        found = [ln for ln in self.log_tail(run_id, 200).splitlines() if ln.startswith("error: ")]
        return found[-1] if found else None

    def state_to_resume(self, run: Run) -> Path | None:
        """The state folder a stopped run left (the one its feed names, else the newest in its output_dir)."""
        end = self.progress(run.id).end
        if end and end.get("status") == "interrupted" and Path(end["path"]).is_dir():
            return Path(end["path"])
        states = sorted(Path(run.output_dir).glob(f"{run.output_name}*-state"), key=lambda p: p.stat().st_mtime)
        return states[-1] if states else None

    def resume(self, run_id: str) -> Run:
        """Queue a run that continues a stopped one from its saved state (same options, `--resume STATE`)."""
        from library.errors import ToolkitError

        run = self.runs.get(run_id)
        if run is None:
            raise ToolkitError(f"run {run_id}: not found")
        if run.status not in FINISHED:
            raise ToolkitError(f"run {run_id} is {run.status}: stop it first")
        state = self.state_to_resume(run)
        if state is None:
            raise ToolkitError(f"--resume: run {run_id} left no saved state in {run.output_dir}")
        argv = _without(run.argv, "--resume")
        return self.submit(run.script, [*argv, "--resume", str(state)], run.output_dir, run.output_name,
                           resumed_from=run.id)

    def lora_files(self, run: Run) -> list[str]:
        """The LoRA files the run wrote that still exist."""
        return [p for kind, p in self.progress(run.id).saves if kind == "lora" and Path(p).is_file()]

    def wait(self, run_id: str, timeout: float = 600) -> Run:
        """Block until the run has ended (tests, scripts)."""
        end = time.time() + timeout
        while time.time() < end:
            run = self.runs[run_id]
            if run.status in FINISHED:
                return run
            time.sleep(0.2)
        raise TimeoutError(run_id)


def _without(argv: list[str], option: str) -> list[str]:
    """`argv` without `option` and its value."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == option:
            skip = True
        elif not word.startswith(option + "="):
            out.append(word)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True

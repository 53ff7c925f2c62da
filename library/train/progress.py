"""`--progress_jsonl FILE`: a machine-readable feed of a training run, one JSON object per line, appended and flushed
as things happen, so another program (the web UI, a dashboard, a script) follows a run without parsing its console.

Every line has `event` and `time` (Unix seconds). Events:
  setup       {}                                                       models and data are being prepared
  start       {step, epoch, max_steps, epochs, steps_per_epoch}       the first step is about to run
  step        {step, epoch, loss, avg_loss, lr: [..]}                 after each optimizer step
  epoch       {epoch, step, avg_loss}                                  after each epoch
  validation  {kind: "step"|"epoch", at, loss}                         a validation loss
  sample      {step, epoch (null: not at an epoch end), files: [..]}   sample images written
  save        {kind: "lora"|"state", path, step}                       a file or state folder written
  end         {status: "done"|"interrupted", step, path}              the final LoRA, or the state to resume
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


class ProgressFeed:
    """Appends events to a JSON-lines file; does nothing when `path` is None (or on ranks other than the first)."""

    def __init__(self, path: str | Path | None, enabled: bool = True) -> None:
        self.file = None
        if path and enabled:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run

    def emit(self, event: str, **fields: object) -> None:
        if self.file is None:
            return
        line = {"event": event, "time": round(time.time(), 3), **{k: _plain(v) for k, v in fields.items()}}
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _plain(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_feed(path: str | Path, start: int = 0) -> tuple[list[dict], int]:
    """The complete events of a feed from byte offset `start`, and the offset to read on from (a line still being
    written is left for the next read)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except OSError:
        return [], start
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events, start + end

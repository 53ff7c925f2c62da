"""A run's progress as the Runs tab shows it, read from the trainer's `--progress_jsonl` feed (incrementally: each
refresh reads only the lines added since the last one)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from library.train.progress import read_feed

WINDOW = 25  # steps in the moving average of the loss chart


@dataclass
class Progress:
    """Everything the feed said so far about one run."""

    offset: int = 0
    phase: str = "starting"
    step: int = 0
    epoch: int = 0
    max_steps: int | None = None
    epochs: int | None = None
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    validation: list[tuple[int, float]] = field(default_factory=list)
    samples: list[tuple[str, str]] = field(default_factory=list)  # (file, caption)
    saves: list[tuple[str, str]] = field(default_factory=list)  # (kind, path)
    end: dict | None = None
    steps_per_epoch: int | None = None

    def update(self, path: Path) -> bool:
        """Read the new lines of the feed; True when something changed."""
        events, self.offset = read_feed(path, self.offset)
        for e in events:
            self._apply(e)
        return bool(events)

    def _apply(self, e: dict) -> None:
        kind = e.get("event")
        if kind == "setup":
            self.phase = "loading models and data"
        elif kind == "start":
            self.phase = "training"
            self.max_steps, self.epochs = e.get("max_steps"), e.get("epochs")
            self.steps_per_epoch = e.get("steps_per_epoch")
            self.step, self.epoch = e.get("step", 0), e.get("epoch", 1)
        elif kind == "step":
            self.step, self.epoch = e["step"], e["epoch"]
            if e.get("loss") is not None:
                self.steps.append(e["step"])
                self.losses.append(e["loss"])
                self.times.append(e["time"])
        elif kind == "validation":
            at = e["at"] if e.get("kind") == "step" else e["at"] * (self.steps_per_epoch or 1)
            self.validation.append((at, e["loss"]))
        elif kind == "sample":
            label = "base (step 0)" if e.get("step") == 0 else (
                f"epoch {e['epoch']}" if e.get("epoch") else f"step {e['step']}")
            self.samples += [(f, f"{label}: {Path(f).name}") for f in e.get("files", [])]
        elif kind == "save":
            self.saves.append((e["kind"], e["path"]))
        elif kind == "end":
            self.end = e
            self.phase = "finished" if e.get("status") == "done" else "stopped (resumable)"

    def rate(self) -> float | None:
        """Steps per second over the last few steps."""
        if len(self.times) < 2:
            return None
        n = min(len(self.times) - 1, 20)
        dt = self.times[-1] - self.times[-1 - n]
        return n / dt if dt > 0 else None

    def summary(self, running: bool) -> str:
        parts = [self.phase]
        if self.max_steps:
            parts.append(f"step {self.step}/{self.max_steps}")
            if self.epochs:
                parts.append(f"epoch {self.epoch}/{self.epochs}")
        rate = self.rate()
        if rate:
            parts.append(f"{rate:.2f} it/s" if rate >= 1 else f"{1 / rate:.2f} s/it")
            if running and self.max_steps and self.end is None:
                left = (self.max_steps - self.step) / rate
                parts.append(f"{time.strftime('%H:%M:%S', time.gmtime(left))} left")
        if self.losses:
            parts.append(f"loss {self.losses[-1]:.4f}")
        return " · ".join(parts)

    def chart_rows(self) -> list[dict]:
        """Rows for the loss chart: step loss, its moving average, validation loss."""
        rows = [{"step": s, "loss": v, "series": "step loss"} for s, v in zip(self.steps, self.losses)]
        total = 0.0
        for i, (s, v) in enumerate(zip(self.steps, self.losses)):
            total += v
            if i >= WINDOW:
                total -= self.losses[i - WINDOW]
            rows.append({"step": s, "loss": total / min(i + 1, WINDOW), "series": f"moving average ({WINDOW})"})
        rows += [{"step": s, "loss": v, "series": "validation"} for s, v in self.validation]
        return rows

    def final_loss(self) -> float | None:
        if not self.losses:
            return None
        tail = self.losses[-WINDOW:]
        return sum(tail) / len(tail)

"""The shipped default checkpoint and its manifest (seed, steps, sha256, the command that made it)."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

from library.errors import ToolkitError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = Path("default") / "sd1-shapes-64.safetensors"
MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write(checkpoint: Path, config: dict, command: list[str], wall_s: float, losses: dict[str, float]) -> Path:
    """Write `manifest.json` beside the checkpoint."""
    import diffusers
    import torch
    import transformers

    data = {
        "file": checkpoint.name,
        "sha256": sha256(checkpoint),
        "command": " ".join(command),
        "seed": config["seed"],
        "steps": config["steps"],
        "config": config,
        "final_losses": {k: round(v, 5) for k, v in losses.items()},
        "wall_time_s": round(wall_s),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
    }
    path = checkpoint.parent / MANIFEST
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def verify(checkpoint: Path) -> str:
    """The checkpoint's sha256 if it matches its manifest; a ToolkitError otherwise."""
    path = checkpoint.parent / MANIFEST
    if not checkpoint.exists():
        raise ToolkitError(f"{checkpoint}: the shipped default model is missing (rebuild it with "
                           "tools/pretrain_default.py, or use --random for the random tiny model)")
    if not path.exists():
        raise ToolkitError(f"{path}: manifest missing, cannot check {checkpoint.name}")
    expected = json.loads(path.read_text(encoding="utf-8"))["sha256"]
    actual = sha256(checkpoint)
    if actual != expected:
        raise ToolkitError(f"{checkpoint}: sha256 {actual[:12]}... does not match {path.name} ({expected[:12]}...)")
    return actual

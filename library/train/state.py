"""Resumable training state: LoRA weights, optimizer, scheduler, loss scaler, RNG of every rank, and the
position (`train_state.json`: current_epoch, current_step). A state folder is built beside its final name and
renamed into place, so an interrupted save never replaces a good one."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from library.errors import ToolkitError

log = logging.getLogger(__name__)
STATE_FILE = "train_state.json"
STATE_FILES = (STATE_FILE, "network.safetensors", "optimizer.pt", "rng_0.pt")


def rng_state() -> dict:
    """RNG states in plain types and tensors, so they load with `torch.load(weights_only=True)`."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                     cached), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,  # noqa: ANN001
               epoch: int, step: int, rank: int = 0, barrier: Callable[[], None] = lambda: None,
               extra: dict | None = None, identity: dict | None = None) -> None:
    """Write the state folder atomically; every rank calls this (each saves its RNG). `identity` (network and
    optimizer settings, base model) goes into train_state.json so `--resume` can refuse another run's state."""
    tmp = path.with_name(f".{path.name}.partial")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rng_state(), tmp / f"rng_{rank}.pt")
    if rank == 0:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in network.state_dict().items()},
                  tmp / "network.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **(extra or {})},
                   tmp / "optimizer.pt")
        position = {"current_epoch": epoch, "current_step": step, **(identity or {})}
        (tmp / STATE_FILE).write_text(json.dumps(position), encoding="utf-8")
    barrier()
    if rank == 0:
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
        log.info("saved state to %s", path)
    barrier()


def read_position(path: Path) -> tuple[int, int]:
    """(current_epoch, current_step) of a state folder."""
    f = Path(path) / STATE_FILE
    if not f.is_file():
        raise ToolkitError(f"--resume {path}: not a state folder (no {STATE_FILE}); give a folder written by "
                           "--save_state, e.g. output/name-step00000100-state")
    data = read_state_file(Path(path))
    return data["current_epoch"], data["current_step"]


def read_state_file(path: Path) -> dict:
    """train_state.json of a state folder, checked: a JSON object whose position entries are whole numbers."""
    f = path / STATE_FILE
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        data["current_epoch"], data["current_step"] = int(data["current_epoch"]), int(data["current_step"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ToolkitError(f"--resume {f}: unreadable ({str(e)[:120] or type(e).__name__}); the state is damaged, "
                           "resume from another one") from None
    return data


def load_state(path: Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,  # noqa: ANN001
               rank: int = 0) -> dict:
    """Restore weights, optimizer, scheduler and this rank's RNG; returns the extra entries saved with them."""
    path = Path(path)
    read_position(path)
    weights = load_file(path / "network.safetensors")
    try:
        missing, unexpected = network.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # torch reports shape mismatches even with strict=False
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise ToolkitError(f"--resume {path}: the saved LoRA does not fit this network ({first[:200]}); same "
                           "--network_dim and --network_args are needed") from None
    if missing or unexpected:
        raise ToolkitError(f"--resume {path}: the saved LoRA does not fit this network "
                           f"({len(missing)} missing, {len(unexpected)} unexpected keys): same --network_dim, "
                           "--network_args and training sides are needed")
    saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    try:
        optimizer.load_state_dict(saved.pop("optimizer"))
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise ToolkitError(f"--resume {path}: optimizer state does not fit ({e}); use the same --optimizer_type "
                           "and learning-rate groups") from None
    scheduler.load_state_dict(saved.pop("scheduler"))
    rng_file = path / f"rng_{rank}.pt"
    if not rng_file.exists():
        rng_file = path / "rng_0.pt"
    set_rng_state(torch.load(rng_file, weights_only=True))
    return saved

"""Everything a training run can learn from its inputs, checked before a model loads: the network module and its
`--network_args`, `--network_weights`, `--resume` (a complete state folder, saved by a run with the same network
and optimizer), and `--logging_dir`. On a real SDXL that is a minute saved per mistake."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from library.errors import ToolkitError
from library.files import check_input_file, check_output_dir, load_state_dict
from library.network_args import check_network_args, parse_network_args
from library.network_module import import_network_module
from library.train.state import STATE_FILE, STATE_FILES, read_state_file

if TYPE_CHECKING:
    from library.options.train import TrainConfig

log = logging.getLogger(__name__)
# what a state must have been saved with to continue this run: (key in train_state.json, option, refuse if differs)
_SAME = (("network_module", "--network_module"), ("network_dim", "--network_dim"),
         ("network_alpha", "--network_alpha"), ("network_args", "--network_args"),
         ("optimizer_type", "--optimizer_type"))


def check_inputs(cfg: TrainConfig, family: str | None = None) -> None:
    """The checks of this module, in the order a user would fix them (`family`: the model's, when known)."""
    check_family_options(cfg, family)
    check_network(cfg)
    if cfg.network_weights:
        check_input_file(cfg.network_weights, "--network_weights")
        load_state_dict(cfg.network_weights)  # every tensor read once: NaN/Inf refused before the base model loads
    if cfg.resume:
        check_resume(cfg)
    if cfg.logging_dir:
        check_output_dir(cfg.logging_dir, "--logging_dir")


def check_family_options(cfg: TrainConfig, family: str | None) -> None:
    """Options whose meaning depends on the model: one `--text_encoder_lr` per text encoder at most."""
    if family is None or not cfg.text_encoder_lr:
        return
    encoders = 2 if family == "sdxl" else 1
    if len(cfg.text_encoder_lr) > encoders:
        what = "SDXL has two text encoders" if encoders == 2 else f"{family.upper()} has one text encoder"
        raise ToolkitError(f"--text_encoder_lr {' '.join(map(str, cfg.text_encoder_lr))}: {len(cfg.text_encoder_lr)} "
                           f"values, but {what}; give at most {encoders}")


def check_output_outside_images(cfg: TrainConfig, image_dirs: list[Path]) -> None:
    """`--output_dir` must not lie in a training image folder (saved samples would become training images, and a
    sync of the data would carry the outputs)."""
    out = Path(cfg.output_dir or ".").resolve()
    for folder in image_dirs:
        folder = folder.resolve()
        if out == folder or folder in out.parents:
            raise ToolkitError(f"--output_dir {cfg.output_dir or '.'}: is inside the training image folder {folder}; "
                               "write the outputs somewhere else")


def check_network(cfg: TrainConfig) -> None:
    """The network module imports and reads the given `--network_args` (names and values)."""
    module = import_network_module(cfg.network_module)
    check_network_args(module, parse_network_args(cfg.network_args))


def run_identity(cfg: TrainConfig) -> dict[str, object]:
    """What a state saved by this run records about it, so that `--resume` can tell another run's state."""
    from library.lora_io import legacy_hash

    model = Path(cfg.pretrained_model_name_or_path or "")
    identity: dict[str, object] = {
        "network_module": cfg.network_module or "networks.lora", "network_dim": cfg.network_dim,
        "network_alpha": cfg.network_alpha, "network_args": sorted(cfg.network_args or []),
        "optimizer_type": (cfg.optimizer_type or "AdamW").lower(), "model_name": model.name}
    if model.is_file():
        identity["model_hash"] = legacy_hash(model)
    return identity


def check_resume(cfg: TrainConfig) -> None:
    """A complete state folder from a run with the same network and optimizer (another base model: a warning)."""
    path = Path(cfg.resume)
    if not path.exists():
        raise ToolkitError(f"--resume {path}: folder not found")
    if not path.is_dir():
        raise ToolkitError(f"--resume {path}: is a file; give the state folder written by --save_state "
                           "(e.g. output/name-step00000100-state)")
    if not (path / STATE_FILE).is_file():
        raise ToolkitError(f"--resume {path}: not a state folder (no {STATE_FILE}); give a folder written by "
                           "--save_state, e.g. output/name-step00000100-state")
    missing = [n for n in STATE_FILES if not (path / n).is_file()]
    if missing:
        raise ToolkitError(f"--resume {path}: incomplete state (no {', '.join(missing)}); resume from another one")
    saved = read_state_file(path)
    now = run_identity(cfg)
    for key, option in _SAME:
        if key in saved and saved[key] != now[key]:
            raise ToolkitError(f"--resume {path}: the state was saved with {option} {_shown(saved[key])}, this run "
                               f"has {_shown(now[key])}; resume with the same {option}, or start a new run")
    if "model_hash" in saved and "model_hash" in now and saved["model_hash"] != now["model_hash"]:
        log.warning("--resume %s: the state was trained on another base model (%s, hash %s); this run continues "
                    "it on %s", path, saved.get("model_name"), saved["model_hash"], now["model_name"])


def _shown(value: object) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value)) or "(none)"
    return "(default)" if value is None else str(value)

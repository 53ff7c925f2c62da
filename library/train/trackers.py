"""Where a run's scalars and sample images go: TensorBoard (`--logging_dir`), wandb (`--log_with wandb`), or
both (`--log_with all`), through one object with TensorBoard's `add_scalar` shape so the loop logs once.

wandb is optional: without the package the run stops before any work with one line. It logs offline (a run
folder under the logging or output folder, `wandb sync` uploads it later) unless the user is logged in
(`--wandb_api_key`, WANDB_API_KEY, or a wandb entry in ~/.netrc) or chose WANDB_MODE; nothing else is sent.
"""

from __future__ import annotations

import logging
import netrc
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from library.errors import ToolkitError

if TYPE_CHECKING:
    from library.options.train import TrainConfig

log = logging.getLogger(__name__)

SECRET_OPTIONS = ("wandb_api_key", "huggingface_token")


def check_trackers(cfg: TrainConfig) -> None:
    """Refuse, before heavy work, a tracker setting that cannot work (as sd-scripts asks for `--logging_dir`)."""
    kind = cfg.log_with
    if kind in ("tensorboard", "all") and not cfg.logging_dir:
        raise ToolkitError(f"--log_with {kind}: TensorBoard needs --logging_dir")
    if kind in ("wandb", "all"):
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ToolkitError(f"--log_with {kind}: the wandb package is not installed (pip install wandb), or "
                               "use --log_with tensorboard") from None
    if cfg.log_tracker_config:
        _tracker_config(cfg.log_tracker_config)


def _tracker_config(path: str) -> dict:
    """`--log_tracker_config`: a TOML whose `[wandb]` table holds `wandb.init` arguments (sd-scripts' layout)."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ToolkitError(f"--log_tracker_config {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ToolkitError(f"--log_tracker_config {path}: not valid TOML ({e})") from None
    wandb_args = data.get("wandb", {})
    if not isinstance(wandb_args, dict):
        raise ToolkitError(f"--log_tracker_config {path}: [wandb] must be a table of wandb.init arguments")
    return wandb_args


def logged_in(api_key: str | None) -> bool:
    """Whether wandb would find credentials: a key given or in WANDB_API_KEY, or a wandb host in the netrc file."""
    if api_key or os.environ.get("WANDB_API_KEY"):
        return True
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        hosts = netrc.netrc(path).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in hosts)


def run_config(cfg: TrainConfig) -> dict:
    """`--log_config`: the run's options, secrets left out, as plain values a tracker can store."""
    out = {}
    for key, value in vars(cfg).items():
        if key in SECRET_OPTIONS or value is None:
            continue
        out[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


class Trackers:
    """TensorBoard and/or wandb behind `add_scalar(tag, value, step)`, `add_images(paths, step)` and `close()`."""

    def __init__(self, cfg: TrainConfig, out_dir: Path) -> None:
        kind = cfg.log_with or ("tensorboard" if cfg.logging_dir else None)
        self.tensorboard = self.wandb = None
        stamp = time.strftime("%Y%m%d%H%M%S")
        if kind in ("tensorboard", "all"):
            from torch.utils.tensorboard import SummaryWriter

            run_dir = Path(cfg.logging_dir) / f"{cfg.log_prefix or ''}{stamp}"
            log.info("TensorBoard logs: %s", run_dir)
            self.tensorboard = SummaryWriter(str(run_dir))
        if kind in ("wandb", "all"):
            self.wandb = _start_wandb(cfg, Path(cfg.logging_dir) if cfg.logging_dir else out_dir, stamp)

    def __bool__(self) -> bool:
        return self.tensorboard is not None or self.wandb is not None

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if self.tensorboard is not None:
            self.tensorboard.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log({tag: value}, step=step)

    def add_images(self, paths: list[Path], step: int) -> None:
        """Sample images (PNG files just written), one tag per prompt index as sd-scripts names them."""
        if not paths:
            return
        import numpy as np
        from PIL import Image

        for i, path in enumerate(paths):
            if self.tensorboard is not None:
                with Image.open(path) as im:
                    self.tensorboard.add_image(f"sample_{i}", np.asarray(im.convert("RGB")), step, dataformats="HWC")
            if self.wandb is not None:
                import wandb

                self.wandb.log({f"sample_{i}": wandb.Image(str(path), caption=path.stem)}, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
            log.info("wandb run saved in %s", self.wandb.dir and Path(self.wandb.dir).parent)


def _start_wandb(cfg: TrainConfig, folder: Path, stamp: str):  # noqa: ANN202 - a wandb Run
    import wandb

    init = {"project": cfg.log_tracker_name or "network_train", "dir": str(folder)}
    if cfg.wandb_run_name:
        init["name"] = cfg.wandb_run_name
    elif cfg.log_prefix:
        init["name"] = f"{cfg.log_prefix}{stamp}"
    if cfg.log_config:
        init["config"] = run_config(cfg)
    if cfg.log_tracker_config:
        init.update(_tracker_config(cfg.log_tracker_config))
    if "mode" not in init and not os.environ.get("WANDB_MODE"):
        if logged_in(cfg.wandb_api_key):
            if cfg.wandb_api_key:
                wandb.login(key=cfg.wandb_api_key)
        else:
            init["mode"] = "offline"
            log.info("wandb: not logged in, logging offline under %s (upload later with `wandb sync`)", folder)
    folder.mkdir(parents=True, exist_ok=True)
    return wandb.init(**init)

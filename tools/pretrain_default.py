"""Pretrain the embedded default model on CPU: a tiny SD1-architecture checkpoint (VAE, CLIP text encoder with the
real vocabulary, U-Net) that draws "a {colour} {shape} on a {colour} background" at 64x64.

Writes the checkpoint (fp16, original single-file layout) and, beside it, `manifest.json` (seed, steps, sha256,
command); the loss curve goes to `--log_dir`. A checkpoint of the EMA weights is written every `--save_every`
steps, so an interrupted run still leaves usable weights. Same seed and thread count, same file (for the same
library versions).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import add_verbosity, run_main, setup_logging  # noqa: E402
from library.default_model import curves, manifest  # noqa: E402
from library.default_model.config import PretrainConfig  # noqa: E402

log = logging.getLogger("pretrain_default")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(manifest.SHIPPED), help="checkpoint to write [%(default)s]")
    parser.add_argument("--log_dir", default="output/pretrain", help="loss curve (CSV, PNG) [%(default)s]")
    parser.add_argument("--save_every", type=int, default=100, help="checkpoint every N diffusion steps [%(default)s]")
    for f in dataclasses.fields(PretrainConfig):
        parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default, help=f"[{f.default}]")
    add_verbosity(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbosity)
    import torch  # heavy: only once the work starts

    from library.default_model.pretrain import Losses, pretrain
    from library.models import save_models
    from library.models.bundle import ModelBundle

    cfg = PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)})
    out, log_dir = Path(args.out), Path(args.log_dir)
    start = time.perf_counter()

    def save(bundle: ModelBundle, step: int, losses: Losses) -> Path:
        """Weights, loss curve and a manifest whose command (with `--steps step`) rebuilds exactly this file:
        the learning rate is constant after warm-up, so a run cut short equals a shorter run."""
        save_models(bundle, out, torch.float16)
        curves.write_csv(losses.rows, log_dir / "loss.csv")
        curves.write_png(losses.rows, log_dir / "loss.png")
        config = dataclasses.asdict(cfg) | {"steps": step}
        command = ["python", "tools/pretrain_default.py", *_replace_steps(argv or sys.argv[1:], step)]
        return manifest.write(out, config, command, time.perf_counter() - start, losses.final)

    bundle, losses = pretrain(cfg, lambda b, step, lo: log.info("checkpoint %s", save(b, step, lo)),
                              args.save_every)
    written = save(bundle, cfg.steps, losses)
    wall = time.perf_counter() - start
    print(f"wall time {wall / 60:.1f} min; final losses: "
          + ", ".join(f"{k} {v:.4f}" for k, v in losses.final.items()))
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB), {written}, {log_dir / 'loss.png'}")


def _replace_steps(argv: list[str], steps: int) -> list[str]:
    """The command line with `--steps` set to `steps`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--steps":
            skip = True
        elif not a.startswith("--steps="):
            out.append(a)
    return [*out, "--steps", str(steps)]

if __name__ == "__main__":
    sys.exit(run_main(main))

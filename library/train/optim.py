"""Optimizer and learning-rate scheduler from sd-scripts' option names (`--optimizer_type`, `--lr_scheduler`)."""

from __future__ import annotations

import ast
import importlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from library.errors import ToolkitError

log = logging.getLogger(__name__)

# lower-case name -> (module, class, pip package, default kwargs)
_BUILTIN = {
    "adamw": ("torch.optim", "AdamW", None, {}),
    "sgdnesterov": ("torch.optim", "SGD", None, {"nesterov": True, "momentum": 0.9}),
    "adamw8bit": ("bitsandbytes.optim", "AdamW8bit", "bitsandbytes", {}),
    "sgdnesterov8bit": ("bitsandbytes.optim", "SGD8bit", "bitsandbytes", {"nesterov": True, "momentum": 0.9}),
    "lion8bit": ("bitsandbytes.optim", "Lion8bit", "bitsandbytes", {}),
    "pagedadamw8bit": ("bitsandbytes.optim", "PagedAdamW8bit", "bitsandbytes", {}),
    "pagedlion8bit": ("bitsandbytes.optim", "PagedLion8bit", "bitsandbytes", {}),
    "pagedadamw": ("bitsandbytes.optim", "PagedAdamW", "bitsandbytes", {}),
    "pagedadamw32bit": ("bitsandbytes.optim", "PagedAdamW32bit", "bitsandbytes", {}),
    "lion": ("lion_pytorch", "Lion", "lion-pytorch", {}),
    "prodigy": ("prodigyopt", "Prodigy", "prodigyopt", {}),
    "dadaptation": ("dadaptation.experimental", "DAdaptAdamPreprint", "dadaptation", {}),
    "dadaptadampreprint": ("dadaptation.experimental", "DAdaptAdamPreprint", "dadaptation", {}),
    "dadaptadanip": ("dadaptation.experimental", "DAdaptAdanIP", "dadaptation", {}),
    "dadaptadagrad": ("dadaptation", "DAdaptAdaGrad", "dadaptation", {}),
    "dadaptadam": ("dadaptation", "DAdaptAdam", "dadaptation", {}),
    "dadaptadan": ("dadaptation", "DAdaptAdan", "dadaptation", {}),
    "dadaptlion": ("dadaptation", "DAdaptLion", "dadaptation", {}),
    "dadaptsgd": ("dadaptation", "DAdaptSGD", "dadaptation", {}),
    "adafactor": ("transformers.optimization", "Adafactor", "transformers", {}),
    "radamschedulefree": ("schedulefree", "RAdamScheduleFree", "schedulefree", {}),
    "adamwschedulefree": ("schedulefree", "AdamWScheduleFree", "schedulefree", {}),
    "sgdschedulefree": ("schedulefree", "SGDScheduleFree", "schedulefree", {}),
}


def parse_optimizer_args(items: Sequence[str] | None) -> dict[str, object]:
    """`key=value` items; values are Python literals, `a,b` a tuple (`betas=0.9,0.999`), else kept as text."""
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ToolkitError(f"--optimizer_args {item!r}: expected key=value")
        values = []
        for part in raw.split(","):
            part = part.strip()
            if part.lower() in ("true", "false"):
                values.append(part.lower() == "true")
                continue
            try:
                values.append(ast.literal_eval(part))
            except (ValueError, SyntaxError):
                values.append(part)
        out[key.strip()] = values[0] if len(values) == 1 else tuple(values)
    return out


@dataclass
class OptimizerSetup:
    optimizer: torch.optim.Optimizer
    description: str  # `ss_optimizer`: module.Class(k=v,...)
    scheduler_override: str | None = None  # Adafactor with relative_step forces its own schedule
    schedule_free: bool = False


def _resolve(name: str) -> tuple[type, dict]:
    key = name.lower()
    if key in _BUILTIN:
        module, cls, package, defaults = _BUILTIN[key]
        try:
            mod = importlib.import_module(module)
        except ImportError:
            raise ToolkitError(f"--optimizer_type {name} needs the {package} package: pip install {package}") from None
        return getattr(mod, cls), dict(defaults)
    if "." in name:
        module, _, cls = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module), cls), {}
        except (ImportError, AttributeError):
            raise ToolkitError(f"--optimizer_type {name}: cannot import {cls} from {module}") from None
    if hasattr(torch.optim, name):
        return getattr(torch.optim, name), {}
    raise ToolkitError(f"--optimizer_type {name!r} is unknown: use AdamW, AdamW8bit, Lion, SGDNesterov, Adafactor, "
                       "Prodigy, DAdaptAdam..., a torch.optim class name, or package.module.Class")


def build_optimizer(name: str | None, optimizer_args: Sequence[str] | None, param_groups: list[dict],
                    learning_rate: float) -> OptimizerSetup:
    """The optimizer over `param_groups` (each may carry its own `lr`)."""
    name = name or "AdamW"
    cls, kwargs = _resolve(name)
    kwargs.update(parse_optimizer_args(optimizer_args))
    key = name.lower()
    lr: float | None = learning_rate
    override = None
    if key.startswith("dadapt") or key == "prodigy":
        if learning_rate <= 0.1:
            log.warning("%s adapts the step size itself; its learning rate is usually 1.0 (given: %g)",
                        name, learning_rate)
        lrs = {g.get("lr") for g in param_groups}
        if len(lrs) > 1:
            log.warning("%s uses one learning rate for all groups; text encoder / U-Net rates differ", name)
    if key == "adafactor":
        kwargs.setdefault("relative_step", True)
        if kwargs["relative_step"]:
            log.info("Adafactor with relative_step: the learning rate %g is its initial rate; "
                     "the schedule becomes adafactor", learning_rate)
            override = f"adafactor:{learning_rate}"
            for g in param_groups:
                g.pop("lr", None)
            lr = None
    try:
        optimizer = cls(param_groups, lr=lr, **kwargs) if lr is not None else cls(param_groups, **kwargs)
    except TypeError as e:
        raise ToolkitError(f"--optimizer_args for {name}: {e}") from None
    args_text = ",".join(f"{k}={v}" for k, v in kwargs.items())
    description = f"{cls.__module__}.{cls.__name__}" + (f"({args_text})" if args_text else "")
    return OptimizerSetup(optimizer, description, override, "schedulefree" in key)


def int_or_ratio(value: float | int | str | None, total: int) -> int:
    """`--lr_warmup_steps` style value: an int count, a float < 1 ratio of `total`, or `N%`."""
    if value is None:
        return 0
    if isinstance(value, str):
        value = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    if value < 1:
        return int(value * total)
    return int(value)


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                    decay_steps: int = 0, num_cycles: int = 1, power: float = 1.0, timescale: int | None = None,
                    min_lr_ratio: float | None = None, scheduler_type: str | None = None,
                    scheduler_args: Sequence[str] | None = None) -> torch.optim.lr_scheduler.LRScheduler:
    """An LR scheduler over `total_steps` scheduler steps (sd-scripts' names and rules)."""
    if scheduler_type:
        module, _, cls = scheduler_type.rpartition(".")
        try:
            sched_cls = getattr(importlib.import_module(module or "torch.optim.lr_scheduler"), cls)
        except (ImportError, AttributeError):
            raise ToolkitError(f"--lr_scheduler_type {scheduler_type}: class not found") from None
        return sched_cls(optimizer, **parse_optimizer_args(scheduler_args))
    if name.startswith("adafactor"):
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer, float(name.split(":", 1)[1]) if ":" in name else 0.0)
    import transformers.optimization as tro

    if name == "piecewise_constant":
        from diffusers.optimization import get_piecewise_constant_schedule

        rules = parse_optimizer_args(scheduler_args).get("step_rules")
        return get_piecewise_constant_schedule(optimizer, str(rules) if rules is not None else None)
    if name == "constant":
        if warmup_steps:
            raise ToolkitError("--lr_scheduler constant takes no warm-up: use constant_with_warmup or "
                               "set --lr_warmup_steps 0")
        return tro.get_constant_schedule(optimizer)
    if name == "constant_with_warmup":
        return tro.get_constant_schedule_with_warmup(optimizer, warmup_steps)
    if name == "inverse_sqrt":
        return tro.get_inverse_sqrt_schedule(optimizer, warmup_steps, timescale)
    if name == "linear":
        return tro.get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    if name == "cosine":
        return tro.get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    if name == "cosine_with_restarts":
        return tro.get_cosine_with_hard_restarts_schedule_with_warmup(optimizer, warmup_steps, total_steps, num_cycles)
    if name == "polynomial":
        return tro.get_polynomial_decay_schedule_with_warmup(optimizer, warmup_steps, total_steps, power=power)
    if name == "cosine_with_min_lr":
        return tro.get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup_steps, total_steps, num_cycles / 2,
                                                               min_lr_rate=min_lr_ratio or 0.0)
    if name == "warmup_stable_decay":
        return tro.get_wsd_schedule(optimizer, warmup_steps, decay_steps, total_steps,
                                    min_lr_ratio=min_lr_ratio or 0.0, num_cycles=num_cycles / 2)
    raise ToolkitError(f"--lr_scheduler {name!r} is unknown: use constant, constant_with_warmup, linear, cosine, "
                       "cosine_with_restarts, polynomial, inverse_sqrt, cosine_with_min_lr, warmup_stable_decay, "
                       "piecewise_constant or adafactor")


def current_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    """Effective learning rate of each group (D-Adaptation/Prodigy: d·lr)."""
    out = []
    for g in optimizer.param_groups:
        lr = g.get("lr") or 0.0
        out.append(lr * g["d"] if "d" in g else lr)
    return out


def steps_for_epochs(epochs: int, batches: int, world: int, grad_accum: int) -> int:
    """`--max_train_epochs` in optimizer steps (sd-scripts' formula)."""
    return epochs * math.ceil(batches / world / grad_accum)

"""Sampler names of sd-scripts (`--sampler`, `--sample_sampler`, per-prompt `--ss`) -> diffusers schedulers."""

from __future__ import annotations

import inspect
import warnings
from typing import TYPE_CHECKING

from library.errors import ToolkitError
from library.options.choices import SAMPLER_ALIASES, SAMPLERS

if TYPE_CHECKING:
    import diffusers

# name -> (diffusers class name, extra constructor arguments)
_SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}),
    "ddpm": ("DDPMScheduler", {"clip_sample": False}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    # first-order-only ending: diffusers refuses the default final sigma of 0 for plain dpmsolver
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
}
_ALIASES = SAMPLER_ALIASES
assert SAMPLERS == tuple(n for n in _SCHEDULERS if n != "ddpm") + tuple(_ALIASES)

# the Stable Diffusion training schedule (SD1, SD2 and SDXL share it)
SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "steps_offset": 1}


def make_scheduler(name: str, v_parameterization: bool = False) -> diffusers.SchedulerMixin:
    """A fresh scheduler for a sampler name (case-insensitive; `k_*` aliases accepted)."""
    import diffusers

    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _SCHEDULERS:
        raise ToolkitError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLERS)}")
    cls_name, extra = _SCHEDULERS[key]
    cls = getattr(diffusers, cls_name)
    kwargs = {**SCHEDULE, **extra, "prediction_type": "v_prediction" if v_parameterization else "epsilon"}
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}  # not every scheduler has steps_offset
    with warnings.catch_warnings():  # plain `dpmsolver` is deprecated upstream but still sd-scripts' choice
        warnings.simplefilter("ignore", FutureWarning)
        return cls(**kwargs)


def canonical_sampler(name: str) -> str:
    """The sampler name as listed in SAMPLERS (aliases kept as written), or a ToolkitError."""
    key = name.lower()
    if key not in SAMPLERS and key != "ddpm":
        raise ToolkitError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLERS)}")
    return key

"""Sampler names of sd-scripts (`--sampler`, `--sample_sampler`, per-prompt `--ss`), without importing Diffusers:
option choices need them before any heavy import."""

from __future__ import annotations

BASE_SAMPLERS = ("ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
                 "dpmsingle")
SAMPLER_ALIASES = {"k_lms": "lms", "k_euler": "euler", "k_euler_a": "euler_a", "k_dpm_2": "dpm_2",
                   "k_dpm_2_a": "dpm_2_a"}
SAMPLERS: tuple[str, ...] = BASE_SAMPLERS + tuple(SAMPLER_ALIASES)

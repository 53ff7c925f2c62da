"""Choice lists of options, kept apart from the modules that act on them so a parser (and `-h`) needs no heavy
import: sampler names of sd-scripts (`--sampler`, `--sample_sampler`, per-prompt `--ss`), image-resize filters,
resize_lora's dynamic rank methods, LoRA file formats, the tools' precision names."""

from __future__ import annotations

BASE_SAMPLERS = ("ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
                 "dpmsingle")
SAMPLER_ALIASES = {"k_lms": "lms", "k_euler": "euler", "k_euler_a": "euler_a", "k_dpm_2": "dpm_2",
                   "k_dpm_2_a": "dpm_2_a"}
SAMPLERS: tuple[str, ...] = BASE_SAMPLERS + tuple(SAMPLER_ALIASES)

# tools/resize_images_to_resolution.py --interpolation (OpenCV filters; `box` is Pillow's)
INTERPOLATIONS = ("area", "cubic", "lanczos4", "nearest", "linear", "box")
# networks/resize_lora.py --dynamic_method
DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")
# networks/convert_lora.py --to (LoRA file formats)
LORA_FORMATS = ("kohya", "diffusers", "peft")
# the tools' --precision/--save_precision (sd-scripts' names; library.cli.str_to_dtype reads them)
PRECISIONS = ("float", "fp16", "bf16")

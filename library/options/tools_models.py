"""Declarations of the options of resize_lora.py (both forms), tools/resize_images_to_resolution.py and
tools/convert_diffusers20_original_sd.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from library.options.choices import DYNAMIC_METHODS, INTERPOLATIONS, PRECISIONS
from library.options.spec import flag, ignored, opt, positive
from library.resize.recipe import DEFAULT_RECIPES

RESIZE, RESIZE_AWARE = "resize_lora", "resize_lora_aware"
RESIZE_IMAGES, CONVERT_CKPT = "resize_images_to_resolution", "convert_diffusers20_original_sd"
K, A = (RESIZE,), (RESIZE_AWARE,)


@dataclass
class ResizeOptions:
    """sd-scripts' form of resize_lora.py."""

    GROUP = "resize (sd-scripts form)"
    model: str = opt(str, None, "LoRA to resize (.safetensors, .ckpt, .pt)", required=True, metavar="PATH", scripts=K)
    save_to: str = opt(str, None, "output file (.safetensors, .ckpt, .pt or .pth)", required=True, metavar="PATH",
                       scripts=K)
    new_rank: int = opt(int, 4, "rank of Linear modules; cap for dynamic methods [4]", check=positive, scripts=K)
    new_conv_rank: int | None = opt(int, None, "rank of conv modules (1x1 and 3x3) [same as --new_rank]",
                                    check=positive, scripts=K)
    dynamic_method: str | None = opt(str, None, "choose each module's rank from its singular values (capped by "
                                     "--new_rank)", choices=DYNAMIC_METHODS, scripts=K)
    dynamic_param: float | None = opt(float, None, "sv_ratio: max σ0/σk ratio; sv_fro: Frobenius share kept; "
                                      "sv_cumulative: Σσ share kept", scripts=K)
    save_precision: str | None = opt(str, None, "dtype written [float]", choices=PRECISIONS, scripts=K)
    device: str | None = opt(str, None, "device for the SVD, e.g. cuda [cpu]", scripts=K)
    verbose: bool = flag("print one line per module and the mean retention", scripts=K)
    svd_lowrank_niter: int | None = opt(int, None, "iterations of sd-scripts' randomized SVD",
                                        **ignored("the decomposition here is always exact"), scripts=K)
    report: Path | None = opt(Path, None, "write each module's spectrum with the cut to a PNG", metavar="PATH",
                              scripts=K)
    verbosity: int = opt(int, 0, "debug logging", aliases=("-v", "--verbose_log"), nargs="count", scripts=K)


@dataclass
class ResizeAwareOptions:
    """The base-model-aware form of resize_lora.py."""

    GROUP = "resize (base-model-aware form)"
    checkpoint: Path = opt(Path, None, "base model the LoRA was trained on (single-file .safetensors/.ckpt)",
                           positional=True, scripts=A)
    loras: list[str] = opt(str, [], "LoRA files, wildcards, or merges a.safetensors:0.7,b.safetensors:0.3",
                           positional=True, nargs="+", scripts=A)
    output_folder: Path | None = opt(Path, None, "output folder [folder of each LoRA]", aliases=("-o",),
                                     metavar="PATH", scripts=A)
    output_dtype: str = opt(str, "16", "float16 or float32 output [16]", choices=("16", "32"), aliases=("-t",),
                            scripts=A)
    device: str | None = opt(str, None, "compute device [cuda if available, else cpu]", aliases=("-d",), scripts=A)
    score_recipes: str = opt(str, DEFAULT_RECIPES, f"recipes separated by ':' [{DEFAULT_RECIPES}]", aliases=("-r",),
                             scripts=A)
    report: Path | None = opt(Path, None, "PNG of every layer's scores with the kept directions and the threshold "
                              "(one per output: FILE_<lora>_<recipe>.png when there are several)", metavar="PATH",
                              scripts=A)
    cache_dir: Path | None = opt(Path, None, "folder of the base-norms cache [$LORA_TOOLKIT_CACHE/norms or "
                                 "~/.cache/sd-lora-toolkit/norms]", metavar="PATH", scripts=A)
    no_cache: bool = flag("neither read nor write the base-norms cache", scripts=A)
    verbosity: int = opt(int, 0, "-v: score quantiles and thresholds; -vv: one line per layer",
                         aliases=("-v", "--verbose"), nargs="count", scripts=A)


@dataclass
class ResizeImagesOptions:
    GROUP = "resize images"
    src_img_folder: str = opt(str, None, "folder with the source images (not searched recursively)", positional=True,
                              scripts=(RESIZE_IMAGES,))
    dst_img_folder: str = opt(str, None, "output folder (created if missing)", positional=True,
                              scripts=(RESIZE_IMAGES,))
    max_resolution: str = opt(str, "512x512,384x384,256x256,128x128", "comma-separated WxH list; only the area W*H "
                              "matters [512x512,384x384,256x256,128x128]", scripts=(RESIZE_IMAGES,))
    divisible_by: int = opt(int, 1, "crop both sides (centred) down to a multiple of this [1]",
                            scripts=(RESIZE_IMAGES,))
    interpolation: str | None = opt(str, None, "resampling filter [area]", choices=INTERPOLATIONS,
                                    scripts=(RESIZE_IMAGES,))
    save_as_png: bool = flag("write PNG instead of JPEG (quality 100)", scripts=(RESIZE_IMAGES,))
    copy_associated_files: bool = flag("also copy same-named non-image files (captions) as <stem>+<WxH><ext>",
                                       scripts=(RESIZE_IMAGES,))


C = (CONVERT_CKPT,)


@dataclass
class ConvertCheckpointOptions:
    GROUP = "checkpoint conversion"
    model_to_load: str = opt(str, None, "single-file checkpoint or Diffusers folder", positional=True, scripts=C)
    model_to_save: str = opt(str, None, "checkpoint file (with extension) or Diffusers folder (without)",
                             positional=True, scripts=C)
    v1: bool = flag("the model is SD1.x (optional: read from the weights)", scripts=C)
    v2: bool = flag("the model is SD2.x (optional: read from the weights)", scripts=C)
    unet_use_linear_projection: bool = flag("the U-Net uses linear projections",
                                            **ignored("the projection type is read from the weights"), scripts=C)
    fp16: bool = flag("save as fp16", scripts=C)
    bf16: bool = flag("save as bf16", scripts=C)
    float: bool = flag("save as float32", scripts=C)
    save_precision_as: str | None = opt(str, None, "save precision (do not combine with --fp16/--bf16/--float); "
                                        "default: as stored", choices=("fp16", "bf16", "float"), scripts=C)
    epoch: int = opt(int, 0, "epoch written into a .ckpt [0]", scripts=C)
    global_step: int = opt(int, 0, "global_step written into a .ckpt [0]", scripts=C)
    metadata: str | None = opt(str, None, "safetensors metadata as a Python/JSON dict, e.g. '{\"name\": \"my "
                               "model\"}'", metavar="DICT", scripts=C)
    variant: str | None = opt(str, None, "Diffusers weights variant to load, e.g. fp16", scripts=C)
    reference_model: str | None = opt(str, None, "local Diffusers folder whose scheduler and tokenizers are copied "
                                      "into a Diffusers output (a hub name is accepted but nothing is downloaded)",
                                      metavar="PATH", scripts=C)
    use_safetensors: bool = flag("write Diffusers folders as safetensors",
                                 **ignored("Diffusers folders are always written as safetensors"), scripts=C)


@dataclass
class ImageToolLogging:
    GROUP = "logging"
    verbosity: int = opt(int, 0, "more log detail (-v: debug)", aliases=("-v", "--verbose_log"), nargs="count",
                         scripts=(RESIZE_IMAGES, CONVERT_CKPT))


MODEL_TOOL_GROUPS: tuple[type, ...] = (ResizeOptions, ResizeAwareOptions, ResizeImagesOptions,
                                       ConvertCheckpointOptions, ImageToolLogging)

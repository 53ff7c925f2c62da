"""Declarations of the LoRA tools' options: merge_lora.py / sdxl_merge_lora.py, svd_merge_lora.py,
extract_lora_from_models.py, extract_lora_from_dylora.py, convert_lora.py and check_lora_weights.py.

Each group class is one `-h` section and one form section in the UI; `scripts=` says which tools take an option.
"""

from __future__ import annotations

from dataclasses import dataclass

from library.options.choices import LORA_FORMATS, PRECISIONS
from library.options.spec import flag, ignored, opt, positive, quantile

MERGE, SDXL_MERGE, SVD_MERGE = "merge_lora", "sdxl_merge_lora", "svd_merge_lora"
EXTRACT, DYLORA, CONVERT, CHECK = "extract_lora_from_models", "extract_lora_from_dylora", "convert_lora", \
    "check_lora_weights"
MERGES = (MERGE, SDXL_MERGE)
ALL_MERGES = (MERGE, SDXL_MERGE, SVD_MERGE)
VERBOSE_TOOLS = (*ALL_MERGES, EXTRACT, DYLORA, CONVERT, CHECK)


@dataclass
class MergeFiles:
    GROUP = "files"
    sd_model: str | None = opt(str, None, "single-file checkpoint (.safetensors/.ckpt) to merge into; omit to merge "
                               "LoRAs together (svd_merge_lora: the base model, needed for DoRA inputs)",
                               metavar="PATH", scripts=ALL_MERGES)
    v2: bool = flag("the model is SD2.x (optional: the family is read from the checkpoint's keys)", scripts=(MERGE,))
    models: list[str] = opt(str, [], "LoRA files, applied in order", nargs="*", metavar="PATH", scripts=ALL_MERGES)
    ratios: list[float] | None = opt(float, None, "one ratio per model (default: 1.0 each)", nargs="*",
                                     scripts=ALL_MERGES)
    lbws: list[str] | None = opt(str, None, "per-model block weights, one JSON list per model (17 or 26 values for "
                                 "SD, 12 or 20 for SDXL; first = text encoder)", nargs="*", metavar="JSON",
                                 scripts=ALL_MERGES)
    save_to: str = opt(str, None, "output file (.safetensors, or .ckpt/.pt for torch.save)", required=True,
                       metavar="PATH", scripts=ALL_MERGES)


@dataclass
class MergeSettings:
    GROUP = "merge"
    concat: bool = flag("LoRA+LoRA: join the ranks (exact: the result's change is the weighted sum of the inputs')",
                        scripts=MERGES)
    shuffle: bool = flag("LoRA+LoRA: permute the rank directions of each module (same result, hides the inputs)",
                         scripts=MERGES)
    new_rank: int = opt(int, 4, "rank for Linear and 1x1 conv modules [4]", check=positive, scripts=(SVD_MERGE,))
    new_conv_rank: int | None = opt(int, None, "rank for 3x3 conv modules (default: --new_rank)", check=positive,
                                    scripts=(SVD_MERGE,))
    device: str | None = opt(str, None, "device for the SVD, e.g. cuda (default cpu)", scripts=(SVD_MERGE,))
    clamp_quantile: float | None = opt(float, None, "clamp the factors to this quantile of their values (sd-scripts "
                                       "always uses 0.99); default: no clamping, so the result stays the best "
                                       "approximation", check=quantile, scripts=(SVD_MERGE,))


@dataclass
class MergePrecision:
    GROUP = "precision and metadata"
    precision: str = opt(str, "float", "dtype of the merge math (svd_merge: of the inputs; the SVD always runs in "
                         "float32) [float]", choices=PRECISIONS, scripts=ALL_MERGES)
    save_precision: str | None = opt(str, None, "dtype written (default: same as --precision)", choices=PRECISIONS,
                                     scripts=ALL_MERGES)
    no_metadata: bool = flag("write no modelspec metadata (LoRA output keeps the minimum ss_* set and hashes)",
                             scripts=ALL_MERGES)


@dataclass
class ExtractFiles:
    GROUP = "files"
    model_org: str = opt(str, None, "original checkpoint (.safetensors/.ckpt)", required=True, metavar="PATH",
                         scripts=(EXTRACT,))
    model_tuned: str = opt(str, None, "fine-tuned checkpoint (.safetensors/.ckpt)", required=True, metavar="PATH",
                           scripts=(EXTRACT,))
    save_to: str = opt(str, None, "output LoRA file (.safetensors, or .ckpt/.pt)", required=True, metavar="PATH",
                       scripts=(EXTRACT,))
    v2: bool = flag("SD2.x models (optional: read from the keys)", scripts=(EXTRACT,))
    sdxl: bool = flag("SDXL models (optional: read from the keys)", scripts=(EXTRACT,))
    v_parameterization: bool | None = opt(None, None, "metadata: the model predicts v (default: same as --v2)",
                                          scripts=(EXTRACT,))


@dataclass
class ExtractSettings:
    GROUP = "extraction"
    dim: int = opt(int, 4, "rank for Linear and 1x1 conv modules [4]", check=positive, scripts=(EXTRACT,))
    conv_dim: int | None = opt(int, None, "also extract 3x3 convs and ResNet layers (LoCon / C3Lier); rank of the "
                               "3x3 convs", check=positive, scripts=(EXTRACT,))
    device: str | None = opt(str, None, "device for the SVD, e.g. cuda (default cpu)", scripts=(EXTRACT,))
    clamp_quantile: float | None = opt(float, None, "clamp the factors to this quantile of their values, as "
                                       "sd-scripts does with 0.99 (default: no clamp, the exact truncated SVD)",
                                       check=quantile, scripts=(EXTRACT,))
    min_diff: float = opt(float, 0.01, "text encoders count as changed when a weight differs by more than this "
                          "[0.01]", scripts=(EXTRACT,))
    load_precision: str | None = opt(str, None, "round the loaded weights to this dtype before taking the "
                                     "difference", choices=PRECISIONS, scripts=(EXTRACT,))
    save_precision: str | None = opt(str, None, "dtype written [float]", choices=PRECISIONS, scripts=(EXTRACT,))
    no_metadata: bool = flag("write no modelspec metadata", scripts=(EXTRACT,))
    load_original_model_to: str | None = opt(str, None, "device to load the original model to",
                                             **ignored("the models are streamed"), scripts=(EXTRACT,))
    load_tuned_model_to: str | None = opt(str, None, "device to load the tuned model to",
                                          **ignored("the models are streamed"), scripts=(EXTRACT,))


@dataclass
class DyloraOptions:
    GROUP = "DyLoRA split"
    model: str = opt(str, None, "DyLoRA file (.safetensors, .ckpt, .pt)", required=True, metavar="PATH",
                     scripts=(DYLORA,))
    save_to: str = opt(str, None, "base output name; each rank r is written to <stem>-{r:04d}<ext> (.safetensors "
                       "if none)", required=True, metavar="PATH", scripts=(DYLORA,))
    unit: int | None = opt(int, None, "rank step used in training (default: the unit in the file's metadata)",
                           check=positive, scripts=(DYLORA,))
    alpha: str = opt(str, "auto", "alpha of each split: 'scale' = alpha*r/dim (files trained here, marked "
                     "ss_dylora_rank_scale=constant), 'keep' = unchanged (sd-scripts' DyLoRA); 'auto' (default) "
                     "picks by that mark", choices=("auto", "keep", "scale"), scripts=(DYLORA,))


@dataclass
class ConvertOptions:
    GROUP = "conversion"
    input: str = opt(str, None, "LoRA file (.safetensors/.ckpt/.pt) or PEFT adapter folder", positional=True,
                     scripts=(CONVERT,))
    output: str = opt(str, None, "output file (.safetensors; kohya also .ckpt/.pt)", positional=True,
                      scripts=(CONVERT,))
    to: str = opt(str, None, "format written", choices=LORA_FORMATS, required=True, scripts=(CONVERT,))
    save_precision: str | None = opt(str, None, "dtype written (default: as stored in the input)",
                                     choices=PRECISIONS, scripts=(CONVERT,))
    rank: int | None = opt(int, None, "LoHa/LoKr/DoRA/Tucker modules become plain LoRAs of at most this rank (the "
                           "best approximation; the relative error is printed) [exact: each change's own rank]",
                           check=positive, scripts=(CONVERT,))
    sd_model: str | None = opt(str, None, "base checkpoint the LoRA was made for: needed to convert DoRA modules "
                               "(their change depends on the base weights)", metavar="PATH", scripts=(CONVERT,))


@dataclass
class CheckOptions:
    GROUP = "check"
    file: str = opt(str, None, "LoRA file (.safetensors, .ckpt, .pt)", positional=True, scripts=(CHECK,))
    show_all: bool = flag("also list every tensor with shape, mean |w| and min |w|, and the metadata",
                          aliases=("-s", "--show_all_keys"), scripts=(CHECK,))


@dataclass
class ToolLogging:
    GROUP = "logging"
    verbosity: int = opt(int, 0, "more log detail (-v: debug)", aliases=("-v", "--verbose_log"), nargs="count",
                         scripts=VERBOSE_TOOLS)


LORA_TOOL_GROUPS: tuple[type, ...] = (MergeFiles, MergeSettings, MergePrecision, ExtractFiles, ExtractSettings,
                                      DyloraOptions, ConvertOptions, CheckOptions)

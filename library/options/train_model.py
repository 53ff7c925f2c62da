"""Declarations of the training options about the model, the network and the dataset (train_network.py and
sdxl_train_network.py, as sd-scripts groups them). One field per option; see `library.options.spec`."""

from __future__ import annotations

from dataclasses import dataclass

from library.options.spec import (
    ALL_LEVELS,
    DATASET,
    GENERAL,
    SUBSET,
    flag,
    ignored,
    non_negative,
    opt,
    positive,
    refused,
)

GD = (GENERAL, DATASET)
RESIZE_METHODS = ("lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area")


def _rate(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be between 0 and 1"


def _split(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be at least 0 and below 1"


def _face_range(value: str) -> str | None:
    try:
        low, high = (float(p) for p in (value if isinstance(value, (list, tuple)) else str(value).split(",")))
    except (TypeError, ValueError):
        return "expected 'LOW,HIGH', e.g. 2.0,4.0"
    return None if 0 < low <= high else "expected 0 < LOW <= HIGH"


def _resolution_problem(value: str) -> str | None:
    try:
        parts = [int(p) for p in str(value).replace("x", ",").split(",")]
    except ValueError:
        return "expected 'SIZE' or 'WIDTH,HEIGHT'"
    if len(parts) not in (1, 2):
        return "expected 'SIZE' or 'WIDTH,HEIGHT'"
    return None if min(parts) > 0 else "sizes must be greater than 0"


@dataclass
class ModelOptions:
    GROUP = "model"
    pretrained_model_name_or_path: str | None = opt(str, None, "base model: a .safetensors/.ckpt checkpoint or a "
                                                    "Diffusers folder (nothing is downloaded)", metavar="PATH")
    v2: bool = flag("the model is SD 2.x")
    v_parameterization: bool = flag("train with the v-prediction target (SD 2.x 768-v models)")
    vae: str | None = opt(str, None, "replace the model's VAE (a file or a Diffusers folder)", metavar="PATH")
    clip_skip: int | None = opt(int, None, "condition on the n-th last text-encoder layer (2 = penultimate)",
                                check=positive, meta="ss_clip_skip")
    max_token_length: int | None = opt(int, None, "caption length in tokens (75, 150 or 225) [75]",
                                       choices=(75, 150, 225), meta="ss_max_token_length")
    lowram: bool = flag("load the model straight onto the GPU (less system memory)", meta="ss_lowram")
    highvram: bool = flag("keep everything on the GPU between steps",
                          **ignored("memory is managed by PyTorch here"))
    tokenizer_cache_dir: str | None = opt(str, None, "folder of a downloaded tokenizer",
                                          **ignored("the CLIP tokenizer ships with this toolkit"))
    disable_mmap_load_safetensors: bool = flag("read .safetensors without memory mapping (SDXL; helps on WSL)",
                                               **ignored("checkpoints are always read tensor by tensor, "
                                                         "without memory mapping"))


@dataclass
class NetworkOptions:
    GROUP = "network"
    network_module: str = opt(str, "networks.lora", "network to train: networks.lora, networks.dylora or "
                              "another module with create_network()")
    network_dim: int | None = opt(int, None, "rank of the LoRA modules [4]", check=positive)
    network_alpha: float = opt(float, 1.0, "alpha: the LoRA output is scaled by alpha / rank (0: alpha = rank)",
                               check=non_negative)
    network_dropout: float | None = opt(float, None, "dropout of the rank activations while training (0..1)",
                                        check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)",
                                        meta="ss_network_dropout")
    network_args: list[str] | None = opt(str, None, "extra network settings as key=value: conv_dim, conv_alpha, "
                                         "rank_dropout, module_dropout, block_dims, ...", nargs="*")
    network_weights: str | None = opt(str, None, "start from the weights of this LoRA file", metavar="PATH")
    dim_from_weights: bool = flag("take the ranks from --network_weights")
    network_train_unet_only: bool = flag("train only the U-Net part of the LoRA")
    network_train_text_encoder_only: bool = flag("train only the text-encoder part of the LoRA")
    base_weights: list[str] | None = opt(str, None, "LoRA files merged into the model before training", nargs="*",
                                         metavar="PATH")
    base_weights_multiplier: list[float] | None = opt(float, None, "multiplier of each --base_weights file "
                                                      "[1.0 each]", nargs="*")
    training_comment: str | None = opt(str, None, "free text stored in the LoRA's metadata",
                                       meta="ss_training_comment")
    scale_weight_norms: float | None = opt(float, None, "max-norm regularisation: scale down modules whose weight "
                                           "norm exceeds this", check=positive, meta="ss_scale_weight_norms")
    dataset_class: str | None = opt(str, None, "a custom dataset class (package.module.Class)",
                                    **refused("custom dataset classes are not supported"))


@dataclass
class DatasetOptions:
    GROUP = "dataset"
    dataset_config: str | None = opt(str, None, "dataset TOML/JSON: [general], [[datasets]], "
                                     "[[datasets.subsets]]", metavar="PATH")
    train_data_dir: str | None = opt(str, None, "folder of '<repeats>_<name>' image folders", metavar="PATH")
    reg_data_dir: str | None = opt(str, None, "folder of '<repeats>_<name>' regularisation image folders",
                                   metavar="PATH")
    in_json: str | None = opt(str, None, "fine-tuning metadata JSON (finetune/ tools); its images are in "
                              "--train_data_dir (docs/finetune_metadata.md)", metavar="PATH")
    dataset_repeats: int = opt(int, 1, "repeats of each image (the default num_repeats of dataset TOML subsets)",
                               check=positive, dataset_key="num_repeats")
    resolution: str | None = opt(str, None, "training size: '512' or 'width,height'", dataset=GD,
                                 check=_resolution_problem)
    enable_bucket: bool = flag("aspect-ratio buckets: train each image near its own aspect ratio", dataset=GD)
    min_bucket_reso: int = opt(int, 256, "smallest bucket side", check=positive, dataset=GD)
    max_bucket_reso: int = opt(int, 1024, "largest bucket side", check=positive, dataset=GD)
    bucket_reso_steps: int = opt(int, 64, "bucket sides are multiples of this (64 for SD1/SD2)", check=positive,
                                 dataset=GD)
    bucket_no_upscale: bool = flag("never enlarge an image to fill its bucket", dataset=GD)
    caption_extension: str = opt(str, ".caption", "extension of the caption files",
                                 aliases=("--caption_extention",), dataset=ALL_LEVELS)
    shuffle_caption: bool = flag("shuffle the comma-separated tags of each caption", dataset=ALL_LEVELS)
    caption_separator: str = opt(str, ",", "separator of the tags in a caption", dataset=ALL_LEVELS)
    keep_tokens: int = opt(int, 0, "keep the first N tags in place when shuffling", check=non_negative,
                           dataset=ALL_LEVELS)
    keep_tokens_separator: str = opt(str, "", "tags before this separator stay in place when shuffling",
                                     dataset=ALL_LEVELS)
    secondary_separator: str | None = opt(str, None, "joins tags that shuffle and drop out as one",
                                          dataset=ALL_LEVELS)
    enable_wildcard: bool = flag("'{a|b|c}' in a caption picks one choice per step; multi-line caption files "
                                 "pick one line", dataset=ALL_LEVELS)
    caption_prefix: str | None = opt(str, None, "text put before every caption", dataset=ALL_LEVELS)
    caption_suffix: str | None = opt(str, None, "text put after every caption", dataset=ALL_LEVELS)
    caption_dropout_rate: float = opt(float, 0.0, "share of steps that train with an empty caption (0..1)",
                                      check=_rate, dataset=ALL_LEVELS, meta="ss_caption_dropout_rate")
    caption_dropout_every_n_epochs: int = opt(int, 0, "drop all captions every N-th epoch", check=non_negative,
                                              dataset=ALL_LEVELS, meta="ss_caption_dropout_every_n_epochs")
    caption_tag_dropout_rate: float = opt(float, 0.0, "chance that each tag is left out (0..1)",
                                          check=_rate, dataset=ALL_LEVELS,
                                          meta="ss_caption_tag_dropout_rate")
    token_warmup_min: int = opt(int, 1, "tags used at the start of the caption warm-up", check=positive,
                                dataset=ALL_LEVELS)
    token_warmup_step: float = opt(float, 0, "steps (or share of training if < 1) until all tags are used",
                                   check=non_negative, dataset=ALL_LEVELS)
    color_aug: bool = flag("random hue changes (no latent caching)", dataset=ALL_LEVELS)
    flip_aug: bool = flag("random horizontal flips", dataset=ALL_LEVELS)
    random_crop: bool = flag("random crops instead of centre crops (no latent caching)", dataset=ALL_LEVELS)
    face_crop_aug_range: str | None = opt(str, None, "'low,high': crop around the face given in the file name "
                                          "(<name>_<cx>_<cy>_<w>_<h>.png) so it spans size/high..size/low "
                                          "pixels (no buckets, uncached)", dataset=ALL_LEVELS,
                                          meta="ss_face_crop_aug_range", check=_face_range)
    resize_interpolation: str | None = opt(str, None, "resampling filter when resizing images [area down, "
                                           "lanczos up]", choices=RESIZE_METHODS, dataset=ALL_LEVELS,
                                           meta="ss_resize_interpolation")
    prior_loss_weight: float = opt(float, 1.0, "loss weight of regularisation images", check=non_negative,
                                   meta="ss_prior_loss_weight")
    cache_info: bool = flag("keep image sizes and captions in metadata_cache.json per folder", dataset=ALL_LEVELS)
    alpha_mask: bool = flag("weight the loss by each image's alpha channel (masked loss)", dataset=(SUBSET,))
    masked_loss: bool = flag("weight the loss by mask images (conditioning_data_dir) or alpha channels")
    conditioning_data_dir: str | None = opt(str, None, "folder of mask images for --masked_loss, matched to the "
                                            "images by name (white = train, black = ignore)", dataset=(SUBSET,),
                                            metavar="PATH")
    weighted_captions: bool = flag("read '(word:1.3)', '(word)' and '[word]' weights in captions")
    debug_dataset: bool = flag("train nothing: write each batch's images as the model sees them, with their "
                               "captions, bucket, crop and flip, to <output_dir>/debug_dataset/")
    validation_split: float = opt(float, 0.0, "share of each subset's images held out for validation (0..1)",
                                  dataset=GD, check=_split, meta="ss_validation_split")
    validation_seed: int | None = opt(int, None, "seed of the validation split and of the validation noise "
                                      "[--seed]", dataset=GD, meta="ss_validation_seed")
    validate_every_n_steps: int | None = opt(int, None, "also validate every N steps", check=positive,
                                             meta="ss_validate_every_n_steps")
    validate_every_n_epochs: int | None = opt(int, None, "validate every N epochs [every epoch]", check=positive,
                                              meta="ss_validate_every_n_epochs")
    max_validation_steps: int | None = opt(int, None, "validation batches per validation [all]", check=positive,
                                           meta="ss_max_validation_steps")
    max_data_loader_n_workers: int = opt(int, 8, "data-loader worker processes (0 loads in the main process)",
                                         check=non_negative)
    persistent_data_loader_workers: bool = flag("keep the data-loader workers between epochs")


@dataclass
class CachingOptions:
    GROUP = "caching"
    cache_latents: bool = flag("encode every image once, kept in memory", meta="ss_cache_latents")
    cache_latents_to_disk: bool = flag("encode every image once, into <image>_WxH_sd.npz beside it")
    vae_batch_size: int = opt(int, 1, "images per VAE batch while caching latents", check=positive)
    skip_cache_check: bool = flag("trust existing latent cache files without checking them")
    cache_text_encoder_outputs: bool = flag("SDXL: encode every caption once before training, then free the text "
                                            "encoders (needs --network_train_unet_only and fixed captions)")
    cache_text_encoder_outputs_to_disk: bool = flag("SDXL: the same, into <image>_te_outputs.npz beside each image, "
                                                    "reused while caption and encoders are unchanged (implies "
                                                    "--cache_text_encoder_outputs)")


@dataclass
class DatasetFileKeys:
    """Keys of a dataset TOML that have no command-line option."""

    GROUP = "dataset file"
    image_dir: str | None = opt(str, None, "folder of the subset's images", dataset=(SUBSET,), scripts=())
    is_reg: bool = flag("the subset holds regularisation images", dataset=(SUBSET,), scripts=())
    class_tokens: str | None = opt(str, None, "caption of images without a caption file", dataset=ALL_LEVELS,
                                   scripts=())
    num_repeats: int = opt(int, 1, "repeats of each image per epoch", dataset=ALL_LEVELS, scripts=())
    batch_size: int = opt(int, 1, "batch size of the dataset [--train_batch_size]", dataset=GD, scripts=())
    network_multiplier: float = opt(float, 1.0, "LoRA multiplier while training on this dataset", dataset=GD,
                                    scripts=())
    custom_attributes: dict | None = opt(dict, None, "free-form table passed along with the subset",
                                         dataset=ALL_LEVELS, scripts=())
    metadata_file: str | None = opt(str, None, "fine-tuning metadata JSON of the subset (makes it a fine-tuning "
                                    "subset; image_dir holds its images)", dataset=(SUBSET,), scripts=())

"""Declarations of the options of the finetune/ tools (sd-scripts' names, defaults and positionals):
merge_captions_to_metadata.py, merge_dd_tags_to_metadata.py and prepare_buckets_latents.py."""

from __future__ import annotations

from dataclasses import dataclass

from library.options.spec import flag, ignored, opt, positive

MERGE_CAPTIONS, MERGE_TAGS, PREPARE = "merge_captions_to_metadata", "merge_dd_tags_to_metadata", \
    "prepare_buckets_latents"
MERGERS = (MERGE_CAPTIONS, MERGE_TAGS)
ALL = (*MERGERS, PREPARE)


@dataclass
class MetadataFiles:
    GROUP = "files"
    train_data_dir: str = opt(str, None, "folder of the training images", positional=True, scripts=ALL)
    in_json: str = opt(str, None, "metadata file to read (merge_captions_to_metadata.py's output)", positional=True,
                       scripts=(PREPARE,))
    out_json: str = opt(str, None, "metadata file to write (may be the one read)", positional=True, scripts=ALL)
    model_name_or_path: str = opt(str, None, "checkpoint, VAE file or Diffusers folder whose VAE encodes (nothing "
                                  "is downloaded)", positional=True, scripts=(PREPARE,))


@dataclass
class MergeOptions:
    GROUP = "metadata"
    in_json: str | None = opt(str, None, "metadata file to start from [out_json when it exists]", metavar="PATH",
                              scripts=MERGERS)
    full_path: bool = flag("key images by their full path, not their stem", scripts=ALL)
    recursive: bool = flag("also images in sub-folders (needs --full_path)", scripts=ALL)
    debug: bool = flag("log each image's text", scripts=MERGERS)


@dataclass
class CaptionFiles:
    GROUP = "text files"
    caption_extension: str = opt(str, ".caption", "extension of the caption files [.caption]",
                                 scripts=(MERGE_CAPTIONS,))
    caption_extention: str | None = opt(str, None, "sd-scripts' old spelling of --caption_extension",
                                        scripts=(MERGE_CAPTIONS,))


@dataclass
class TagFiles:
    GROUP = "text files"
    caption_extension: str = opt(str, ".txt", "extension of the tag files [.txt]", scripts=(MERGE_TAGS,))


@dataclass
class PrepareOptions:
    GROUP = "buckets and latents"
    max_resolution: str = opt(str, "512,512", "training size 'width,height' [512,512]", scripts=(PREPARE,))
    min_bucket_reso: int = opt(int, 256, "smallest bucket side [256]", check=positive, scripts=(PREPARE,))
    max_bucket_reso: int = opt(int, 1024, "largest bucket side [1024]", check=positive, scripts=(PREPARE,))
    bucket_reso_steps: int = opt(int, 64, "bucket sides are multiples of this [64]", check=positive,
                                 scripts=(PREPARE,))
    bucket_no_upscale: bool = flag("never enlarge an image to its bucket", scripts=(PREPARE,))
    batch_size: int = opt(int, 1, "images per VAE batch [1]", check=positive, scripts=(PREPARE,))
    mixed_precision: str = opt(str, "no", "VAE precision [no]", choices=("no", "fp16", "bf16"), scripts=(PREPARE,))
    flip_aug: bool = flag("also store the latents of the mirrored image", scripts=(PREPARE,))
    alpha_mask: str = opt(str, "", "'true': store each image's alpha channel as its loss mask (sd-scripts takes a "
                          "value here; any but 0/false/no turns it on)", metavar="TRUE", scripts=(PREPARE,))
    skip_existing: bool = flag("keep .npz files that already fit", scripts=(PREPARE,))
    max_data_loader_n_workers: int | None = opt(int, None, "image-reading workers",
                                                **ignored("images are read in this process"), scripts=(PREPARE,))
    v2: bool = flag("the model is SD2.x", **ignored("the VAE is the same; sd-scripts ignores it too"),
                    scripts=(PREPARE,))


@dataclass
class FinetuneLogging:
    GROUP = "logging"
    verbosity: int = opt(int, 0, "more log detail (-v: debug)", aliases=("-v", "--verbose_log"), nargs="count",
                         scripts=ALL)


FINETUNE_TOOL_GROUPS: tuple[type, ...] = (MetadataFiles, MergeOptions, CaptionFiles, TagFiles, PrepareOptions,
                                          FinetuneLogging)

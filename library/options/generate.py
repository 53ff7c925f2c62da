"""Declarations of gen_img_diffusers.py's options; `GenerationConfig` is both the declaration and the typed
configuration the generator reads (field names are the option names)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from library.options.choices import SAMPLERS
from library.options.parser import OptionParser, build_option_parser
from library.options.spec import GEN, Option, flag, opt, options_of, positive

G = (GEN,)

GEN_DESCRIPTION = """Generate images (txt2img, img2img) from an SD1/SD2/SDXL checkpoint, optionally with LoRA networks.

Example:
  python gen_img_diffusers.py --ckpt model.safetensors --outdir out --prompt "a cat --n blurry --d 42" \\
      --steps 20 --sampler euler_a --network_module networks.lora --network_weights my_lora.safetensors
Prompt lines (--prompt or --from_file) take per-line options: --n negative, --w/--h size, --s steps,
--l CFG scale, --d seed(s), --t img2img strength, --ss sampler, --am network multipliers."""


def _strength(value: float) -> str | None:
    return None if 0.0 < value <= 1.0 else "must be in (0, 1]"


def _size(value: int) -> str | None:
    return None if value >= 8 else "must be at least 8 (sizes are rounded down to a multiple of 8)"


@dataclass
class GenModelOptions:
    GROUP = "model"
    ckpt: str = opt(str, None, "checkpoint (.safetensors/.ckpt) or Diffusers folder (required)", scripts=G,
                    metavar="PATH")
    v2: bool = flag("treat the model as SD2 (normally detected)", scripts=G)
    sdxl: bool = flag("treat the model as SDXL (normally detected)", scripts=G)
    v_parameterization: bool = flag("v-prediction model (SD2 768-v)", scripts=G)
    fp16: bool = flag("float16 weights (GPU; on CPU falls back to float32)", scripts=G)
    bf16: bool = flag("bfloat16 weights (GPU or CPU)", scripts=G)
    xformers: bool = flag("xformers attention (optional package, GPU only)", scripts=G)
    sdpa: bool = flag("PyTorch SDPA attention (the default)", scripts=G)


@dataclass
class GenPromptOptions:
    GROUP = "prompts and output"
    prompt: str | None = opt(str, None, "one prompt; per-line options such as --n, --d may follow", scripts=G)
    from_file: str | None = opt(str, None, "prompt file: .txt (one per line), .toml or .json", scripts=G,
                                metavar="PATH")
    negative_prompt: str | None = opt(str, None, "negative prompt for lines without --n [empty]", scripts=G)
    outdir: str = opt(str, "outputs", "output folder", scripts=G, metavar="PATH")
    images_per_prompt: int = opt(int, 1, "images per prompt", check=positive, scripts=G)
    n_iter: int = opt(int, 1, "repeat the whole prompt list this often", check=positive, scripts=G)
    sequential_file_name: bool = flag("name images im_000001.png, ...", scripts=G)
    use_original_file_name: bool = flag("img2img: name each image after its source image", scripts=G)


@dataclass
class GenSamplingOptions:
    GROUP = "sampling"
    steps: int = opt(int, 50, "sampling steps", check=positive, scripts=G)
    scale: float = opt(float, 7.5, "classifier-free guidance scale", scripts=G)
    sampler: str = opt(str.lower, "ddim", "sampler", choices=SAMPLERS, scripts=G)
    W: int | None = opt(int, None, "image width (rounded down to a multiple of 8) [512]", check=_size, scripts=G)
    H: int | None = opt(int, None, "image height (rounded down to a multiple of 8) [512]", check=_size, scripts=G)
    seed: int | None = opt(int, None, "seed of a single image, or the seed of the seeds of several [random]",
                           scripts=G)
    iter_same_seed: bool = flag("without --seed: one random seed shared by all prompts of an iteration", scripts=G)
    batch_size: int = opt(int, 1, "images per batch", check=positive, scripts=G)
    clip_skip: int | None = opt(int, None, "use the n-th text-encoder layer from the end", check=positive,
                                scripts=G)
    max_embeddings_multiples: int | None = opt(int, None, "allow prompts of up to 75*N tokens [1]", check=positive,
                                               scripts=G)
    image_path: str | None = opt(str, None, "img2img source image or folder of images", scripts=G, metavar="PATH")
    strength: float | None = opt(float, None, "img2img strength (0..1] [0.8]", check=_strength, scripts=G)


@dataclass
class GenNetworkOptions:
    GROUP = "networks (LoRA)"
    network_module: list[str] = opt(str, [], "network module(s), e.g. networks.lora", nargs="*", scripts=G)
    network_weights: list[str] = opt(str, [], "network file(s), one per module", nargs="*", scripts=G,
                                     metavar="PATH")
    network_mul: list[float] = opt(float, [], "multiplier(s) [1.0 each]", nargs="*", scripts=G)
    network_args: list[str] = opt(str, [], "extra arguments, one string per network: key=value;key=value",
                                  nargs="*", scripts=G)
    network_merge: bool = flag("merge all networks into the weights (faster)", scripts=G)
    network_merge_n_models: int | None = opt(int, None, "merge only the first N networks", check=positive,
                                             scripts=G)
    network_show_meta: bool = flag("log each network file's metadata", scripts=G)


@dataclass
class GenLoggingOptions:
    GROUP = "logging"
    verbosity: int = opt(int, 0, "more log detail (-v: debug)", aliases=("-v", "--verbose_log"), nargs="count",
                         scripts=G)


GEN_GROUPS: tuple[type, ...] = (GenModelOptions, GenPromptOptions, GenSamplingOptions, GenNetworkOptions,
                                GenLoggingOptions)
GEN_EXCLUSIVE: tuple[tuple[str, str], ...] = (("fp16", "bf16"), ("prompt", "from_file"))


@dataclass
class GenerationConfig(GenLoggingOptions, GenNetworkOptions, GenSamplingOptions, GenPromptOptions, GenModelOptions):
    """Everything gen_img_diffusers.py takes; field names are the command-line option names."""


def gen_options() -> list[Option]:
    """gen_img_diffusers.py's options, in help order."""
    return [o for cls in GEN_GROUPS for o in options_of(cls)]


def build_gen_parser(description: str | None = None) -> OptionParser:
    return build_option_parser(gen_options(), GEN, description or GEN_DESCRIPTION)


def generation_config(values: dict) -> GenerationConfig:
    """A GenerationConfig from option values by name (others dropped)."""
    return GenerationConfig(**{f.name: values[f.name] for f in fields(GenerationConfig) if f.name in values})

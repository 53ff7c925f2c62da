"""The tools (networks/*.py, tools/*.py) by name: their script, description and declared options, and the parsing
every tool's `main` starts with. The UI's tool forms and the docs' option tables read the same registry."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from library.options.parse import check_values, report_ignored
from library.options.parser import OptionParser, build_option_parser
from library.options.spec import Option, options_of
from library.options.tools_finetune import FINETUNE_TOOL_GROUPS, MERGE_CAPTIONS, MERGE_TAGS, PREPARE
from library.options.tools_lora import (
    CHECK,
    CONVERT,
    DYLORA,
    EXTRACT,
    LORA_TOOL_GROUPS,
    MERGE,
    SDXL_MERGE,
    SVD_MERGE,
    ToolLogging,
)
from library.options.tools_models import CONVERT_CKPT, MODEL_TOOL_GROUPS, RESIZE, RESIZE_AWARE, RESIZE_IMAGES

_GROUPS = (*LORA_TOOL_GROUPS, *MODEL_TOOL_GROUPS, *FINETUNE_TOOL_GROUPS, ToolLogging)

AWARE_EPILOG = ("recipes: comma lists of score weights (spn_ckpt, spn_lora, fro_ckpt, fro_lora, subspace, params; "
                "normalised to sum 1),\none selector (thr=<log10> or size=<MiB>) and optional rescale=<factor>; "
                "separate several recipes with ':'.\nLORA may be a wildcard or a weighted merge 'a.safetensors:0.7,"
                "b.safetensors:0.3'.\nOutputs: <lora>_<recipe>_th<threshold>.safetensors. See docs/resize_lora.md.")
RESIZE_IMAGES_DESCRIPTION = """Shrink every image in a folder to one or more maximum areas, keeping the aspect ratio; \
never upscales.

Each image is written once per resolution as `<stem>+<WxH>.jpg` (or `.png` with --save_as_png).
Example: python tools/resize_images_to_resolution.py img/ img_small/ --max_resolution 512x512,384x384
"""


@dataclass(frozen=True)
class Tool:
    """One command-line tool: `name` is its key (and its options' `scripts=` entry), `script` its file."""

    name: str
    script: str
    title: str
    description: str
    epilog: str | None = None
    exclusive: tuple[tuple[str, str], ...] = ()
    allow_abbrev: bool = True  # as argparse's default, which these tools always had (sd-scripts' too)

    def options(self) -> list[Option]:
        """The tool's options in help order."""
        return [o for cls in _GROUPS for o in options_of(cls) if self.name in o.scripts]

    @property
    def prog(self) -> str:
        return self.script.rsplit("/", 1)[-1]

    def usage(self) -> str:
        """One line: the script, its positional and required arguments, `[options]`."""
        words = [self.prog]
        for o in self.options():
            shown = o.metavar or (o.name if o.positional else "{" + ",".join(o.choices) + "}" if o.choices else
                                  "TEXT")
            if o.positional:
                words.append(f"{shown} [{shown} ...]" if o.nargs == "+" else shown)
            elif o.required:
                words.append(f"--{o.name} {shown}")
        return " ".join([*words, "[options]"])

    def parser(self) -> OptionParser:
        description = "\n".join(textwrap.fill(line, 100) for line in self.description.splitlines())
        p = build_option_parser(self.options(), self.name, description, self.epilog, usage=self.usage(),
                                allow_abbrev=self.allow_abbrev, prog=self.prog)
        p.usage_hint = self.usage()
        return p


TOOLS: dict[str, Tool] = {t.name: t for t in (
    Tool(MERGE, "networks/merge_lora.py", "merge LoRAs (SD1/SD2)",
         "Merge LoRAs into an SD1.x/SD2.x checkpoint, or merge LoRAs into one LoRA (no --sd_model)."),
    Tool(SDXL_MERGE, "networks/sdxl_merge_lora.py", "merge LoRAs (SDXL)",
         "Merge LoRAs into an SDXL checkpoint (te1, te2, U-Net), or merge SDXL LoRAs into one LoRA (no --sd_model)."),
    Tool(SVD_MERGE, "networks/svd_merge_lora.py", "SVD merge",
         "Merge any number of LoRAs (any ranks and alphas) into one LoRA of a chosen rank."),
    Tool(EXTRACT, "networks/extract_lora_from_models.py", "extract a LoRA",
         "Extract a LoRA from the difference between a fine-tuned checkpoint and its original.",
         exclusive=(("v2", "sdxl"),)),
    Tool(RESIZE, "networks/resize_lora.py", "resize a LoRA (sd-scripts)",
         "sd-scripts form: resize one LoRA to a fixed or dynamic rank.", allow_abbrev=False),
    Tool(RESIZE_AWARE, "networks/resize_lora.py", "resize LoRAs (recipes)",
         "Base-model-aware form: keep each LoRA direction whose score against the base checkpoint passes the "
         "recipe. The sd-scripts form (--model/--save_to/--new_rank ...) is also accepted; run "
         "`resize_lora.py --model x -h` for its options.", AWARE_EPILOG, allow_abbrev=False),
    Tool(DYLORA, "networks/extract_lora_from_dylora.py", "split a DyLoRA",
         "Split a DyLoRA file into one LoRA per rank step."),
    Tool(CONVERT, "networks/convert_lora.py", "convert a LoRA",
         "Convert a LoRA between the kohya, Diffusers and PEFT formats (the input format is read from its keys)."),
    Tool(CONVERT_CKPT, "tools/convert_diffusers20_original_sd.py", "convert a checkpoint",
         "Convert a Stable Diffusion model between a Diffusers folder and a single-file checkpoint, either "
         "direction.", exclusive=(("v1", "v2"),)),
    Tool(CHECK, "networks/check_lora_weights.py", "check a LoRA",
         "Inspect a LoRA file: modules, ranks, alphas, norms, problems."),
    Tool(RESIZE_IMAGES, "tools/resize_images_to_resolution.py", "resize images", RESIZE_IMAGES_DESCRIPTION),
    Tool(MERGE_CAPTIONS, "finetune/merge_captions_to_metadata.py", "captions into metadata",
         "Put each image's caption file into a fine-tuning metadata JSON (sd-scripts' file; docs/finetune_metadata.md)."),
    Tool(MERGE_TAGS, "finetune/merge_dd_tags_to_metadata.py", "tags into metadata",
         "Put each image's tag file (a tagger's output) into a fine-tuning metadata JSON; training appends the tags "
         "to the caption."),
    Tool(PREPARE, "finetune/prepare_buckets_latents.py", "buckets and latents",
         "Give every image of a fine-tuning metadata JSON its bucket (train_resolution) and its VAE latents "
         "(<stem>.npz beside it, sd-scripts' keys)."),
)}


def check_tool_args(name: str, argv: Sequence[str] | None) -> dict:
    """A tool's option values by name, parsed and checked as its script does (nothing logged, nothing set up):
    what the UI calls before it starts the tool. Errors are one-line ToolkitErrors."""
    tool = TOOLS[name]
    values = vars(tool.parser().parse_args(argv))
    check_values(tool.options(), values, name, tool.exclusive)
    return values


def parse_tool_args(name: str, argv: Sequence[str] | None,
                    log_verbosity: Callable[[int], int] | None = None) -> argparse.Namespace:
    """Parse and check a tool's command line and set up logging (`log_verbosity` maps -v counts to
    `setup_logging`'s level); errors are one-line ToolkitErrors."""
    from library.cli import setup_logging

    values = check_tool_args(name, argv)
    verbosity = values.get("verbosity", 0)
    setup_logging(log_verbosity(verbosity) if log_verbosity else verbosity)
    report_ignored(TOOLS[name].options(), values, name)
    return argparse.Namespace(**values)

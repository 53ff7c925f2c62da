"""Convert a LoRA between the kohya, Diffusers and PEFT formats (the input format is read from its keys).

    python networks/convert_lora.py my_lora.safetensors my_lora_diffusers.safetensors --to diffusers
    python networks/convert_lora.py pytorch_lora_weights.safetensors my_lora_kohya.safetensors --to kohya
    python networks/convert_lora.py peft_adapter_folder/ my_lora_kohya.safetensors --to kohya

kohya: `lora_unet_…`/`lora_te…` with `.alpha` (sd-scripts, A1111, ComfyUI). diffusers: `unet.….lora.down/up` as
diffusers' converter and training scripts write. peft: `unet.….lora_A/lora_B` (get_peft_model_state_dict).
SD1/SD2/SDXL, LoRA and LoCon; factors, per-module ranks and alphas are carried exactly (alphas of the Diffusers
and PEFT forms live in the `lora_adapter_metadata` header entry, which `load_lora_weights` reads).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.cli import run_main, str_to_dtype  # noqa: E402
from library.options.tools import parse_tool_args  # noqa: E402

log = logging.getLogger("convert_lora")


def main(argv: list[str] | None = None) -> None:
    args = parse_tool_args("convert_lora", argv)
    from library.files import check_output_file
    from library.lora_convert import convert_lora

    check_output_file(args.output, "output", [("input", args.input)], weights=True)

    lora, count = convert_lora(args.input, args.output, args.to, str_to_dtype(args.save_precision))
    log.info("%s (%s%s) -> %s (%s): %d modules", args.input, lora.fmt, ", SDXL" if lora.sdxl else "", args.output,
             args.to, count)


if __name__ == "__main__":
    sys.exit(run_main(main))

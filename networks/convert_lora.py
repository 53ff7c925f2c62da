"""Convert a LoRA between the kohya, Diffusers and PEFT formats (the input format is read from its keys).

    python networks/convert_lora.py my_lora.safetensors my_lora_diffusers.safetensors --to diffusers
    python networks/convert_lora.py pytorch_lora_weights.safetensors my_lora_kohya.safetensors --to kohya
    python networks/convert_lora.py peft_adapter_folder/ my_lora_kohya.safetensors --to kohya

kohya: `lora_unet_…`/`lora_te…` with `.alpha` (sd-scripts, A1111, ComfyUI). diffusers: `unet.….lora.down/up` as
diffusers' converter and training scripts write. peft: `unet.….lora_A/lora_B` (get_peft_model_state_dict).
SD1/SD2/SDXL, LoRA and LoCon; factors, per-module ranks and alphas are carried exactly (alphas of the Diffusers
and PEFT forms live in the `lora_adapter_metadata` header entry, which `load_lora_weights` reads).
LoHa, LoKr, Tucker LoCon and DoRA (with --sd_model) become plain LoRAs, exactly or at most --rank:

    python networks/convert_lora.py my_lokr.safetensors my_lokr_diffusers.safetensors --to diffusers --rank 32

`--to peft` without --rank keeps LoHa/LoKr as PEFT LoHa/LoKr adapters where PEFT can hold them; PEFT LoHa/LoKr files
come back `--to kohya` as LyCORIS files (docs/lycoris.md).
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
    from library.merge import BaseWeights

    check_output_file(args.output, "output", [("input", args.input)] +
                      ([("--sd_model", args.sd_model)] if args.sd_model else []), weights=True)
    base = BaseWeights(args.sd_model) if args.sd_model else None
    lora, count = convert_lora(args.input, args.output, args.to, str_to_dtype(args.save_precision), args.rank,
                               base.get if base else None)
    log.info("%s (%s%s) -> %s (%s): %d modules", args.input, lora.fmt, ", SDXL" if lora.sdxl else "", args.output,
             args.to, count)
    conv = lora.conversion
    if conv is not None and conv.modules:
        ranks = [k for k, _, _ in conv.modules.values()]
        worst = conv.worst()
        print(f"{len(ranks)} LyCORIS module(s) written as plain LoRA (rank {min(ranks)}-{max(ranks)}): relative error "
              f"{conv.relative_error:.3g} of the change (worst {worst[0]}: {worst[1]:.3g})")


if __name__ == "__main__":
    sys.exit(run_main(main))

"""Per-block LoRA weights (`--lbws`): parse the lists and find the block slot of a LoRA module name.

Slots follow the 26-slot list `[BASE, IN00..IN11, MID, OUT00..OUT11]`; BASE is every text-encoder module.
Short lists (17 for SD, 12 or 20 for SDXL) fill only some slots, in order; unlisted slots weigh 1.
"""

from __future__ import annotations

import json
import re

from library.block_weights import block_index
from library.errors import ToolkitError

N_SLOTS = 26
BASE, MID = 0, 13


def _slots(names: list[str]) -> list[int]:
    def idx(name: str) -> int:
        if name == "BASE":
            return BASE
        if name == "MID":
            return MID
        return (1 if name.startswith("IN") else 14) + int(name[-2:])

    return [idx(n) for n in names]


_IN = [f"IN{i:02d}" for i in range(12)]
_OUT = [f"OUT{i:02d}" for i in range(12)]
# slots each list length fills, and whether that length is meant for SDXL
LAYOUTS: dict[int, tuple[list[int], bool]] = {
    17: (_slots(["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "MID", *_OUT[3:12]]), False),
    26: (list(range(N_SLOTS)), False),
    12: (_slots(["BASE", "IN04", "IN05", "IN07", "IN08", "MID", *_OUT[0:6]]), True),
    20: (_slots(["BASE", *_IN[0:9], "MID", *_OUT[0:9]]), True),
}


def parse_lbws(texts: list[str] | None, n_models: int) -> tuple[list[list[float]] | None, bool | None]:
    """`--lbws` strings (one JSON list per model) to full 26-slot weight lists, and whether they mean SDXL."""
    if not texts:
        return None, None
    if len(texts) != n_models:
        raise ToolkitError(f"--lbws: {len(texts)} lists given for {n_models} models; give one per model")
    parsed = []
    for text in texts:
        try:
            values = json.loads(text)
        except json.JSONDecodeError:
            raise ToolkitError(f"--lbws: {text!r} is not a JSON list such as [1,0.5,...]") from None
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
            raise ToolkitError(f"--lbws: {text!r} must be a list of numbers")
        parsed.append([float(v) for v in values])
    lengths = {len(p) for p in parsed}
    if len(lengths) != 1:
        raise ToolkitError(f"--lbws: all lists must have the same length (got {sorted(lengths)})")
    n = lengths.pop()
    if n not in LAYOUTS:
        raise ToolkitError(f"--lbws: a list has {n} values; use 17 or 26 (SD1/SD2) or 12 or 20 (SDXL)")
    slots, sdxl = LAYOUTS[n]
    full = []
    for p in parsed:
        w = [1.0] * N_SLOTS
        for slot, value in zip(slots, p):
            w[slot] = value
        full.append(w)
    return full, sdxl


def block_slot(lora_name: str, sdxl: bool) -> int | None:
    """Slot (0..25) of a LoRA module name, or None for modules outside the listed blocks (weight 1)."""
    if "text_model_encoder_" in lora_name:
        return BASE
    if sdxl:
        if m := re.match(r"lora_unet_input_blocks_(\d+)_", lora_name):
            return 1 + int(m.group(1))
        if lora_name.startswith("lora_unet_middle_block_"):
            return MID
        if m := re.match(r"lora_unet_output_blocks_(\d+)_", lora_name):
            return 14 + int(m.group(1))
        if lora_name.startswith(("lora_unet_time_embed_", "lora_unet_label_emb_")):
            return 1
        if lora_name.startswith("lora_unet_out_"):
            return 23
        return None
    index = block_index(lora_name, sdxl=False)  # SD slots are the training block index + 1 (slot 0 = BASE)
    return None if index < 0 else index + 1


def block_weight(weights: list[float] | None, lora_name: str, sdxl: bool) -> float:
    """The weight a full 26-slot list gives this module (1 without a list or outside the listed blocks)."""
    if weights is None:
        return 1.0
    slot = block_slot(lora_name, sdxl)
    return 1.0 if slot is None else weights[slot]

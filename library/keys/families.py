"""Top-level key prefixes of original single-file checkpoints, per model family."""

from __future__ import annotations

from dataclasses import dataclass

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
FAMILIES = ("sd1", "sd2", "sdxl")


@dataclass(frozen=True)
class TESpec:
    """One text encoder of a family: LoRA prefix, checkpoint prefix, and its key layout (hf/openclip)."""

    lora_prefix: str
    ckpt_prefix: str
    layout: str


_TE = {
    "sd1": (TESpec("lora_te", "cond_stage_model.transformer.", "hf"),),
    "sd2": (TESpec("lora_te", "cond_stage_model.model.", "openclip"),),
    "sdxl": (
        TESpec("lora_te1", "conditioner.embedders.0.transformer.", "hf"),
        TESpec("lora_te2", "conditioner.embedders.1.model.", "openclip"),
    ),
}


def te_specs(family: str) -> tuple[TESpec, ...]:
    """Text encoders of a family, in order (SDXL: CLIP-L then OpenCLIP bigG)."""
    return _TE[family]


def detect_family(keys) -> str | None:  # noqa: ANN001 - iterable of original keys
    """Family from the keys of an original checkpoint: SDXL, SD2 (OpenCLIP TE) or SD1; None if unknown."""
    keys = list(keys)
    if any(k.startswith("conditioner.embedders.1.") or k.startswith(UNET_PREFIX + "label_emb.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd1"
    return None

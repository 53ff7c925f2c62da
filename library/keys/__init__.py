"""The one owner of names: original checkpoint keys, Diffusers parameter names and kohya LoRA names."""

from library.keys.families import FAMILIES, UNET_PREFIX, VAE_PREFIX, TESpec, detect_family, te_specs
from library.keys.lora_names import (
    Target,
    checkpoint_targets,
    family_of_lora,
    module_name,
    te_lora_name,
    unet_lora_name,
)
from library.keys.unet import UNetLayout, layout_from_config, layout_from_original_keys

__all__ = [
    "FAMILIES", "UNET_PREFIX", "VAE_PREFIX", "TESpec", "Target", "UNetLayout", "checkpoint_targets",
    "detect_family", "family_of_lora", "layout_from_config", "layout_from_original_keys", "module_name",
    "te_lora_name", "te_specs", "unet_lora_name",
]

"""The loaded model set: U-Net, VAE, text encoder(s), tokenizer(s), and what the file held besides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class ModelBundle:
    """One Stable Diffusion model. `extra` keeps original keys the models do not use (for a faithful save)."""

    family: str  # "sd1", "sd2" or "sdxl"
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list[torch.nn.Module]
    tokenizers: list = field(default_factory=list)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    source: Path | None = None
    v_parameterization: bool = False

    @property
    def is_sdxl(self) -> bool:
        return self.family == "sdxl"

    @property
    def is_v2(self) -> bool:
        return self.family == "sd2"

    @property
    def base_model_version(self) -> str:
        """`ss_base_model_version` value (sd_v1, sd_v2, sd_v1_v, sd_v2_v, sdxl_base_v1-0)."""
        if self.is_sdxl:
            return "sdxl_base_v1-0"
        return ("sd_v2" if self.is_v2 else "sd_v1") + ("_v" if self.v_parameterization else "")

"""Test helper: LoRA files with random non-zero weights for the tiny models (not a test module)."""

from __future__ import annotations

from pathlib import Path

import torch

from library.models.factory import random_bundle


def make_lora(path: Path, family: str, strength: float = 0.1, seed: int = 0, dim: int = 4) -> Path:
    """A LoRA for the tiny `family` models with random up weights (so it visibly changes the output)."""
    from networks import lora

    bundle = random_bundle(family)
    te = bundle.text_encoders if bundle.is_sdxl else bundle.text_encoders[0]
    network = lora.create_network(1.0, dim, dim, bundle.vae, te, bundle.unet)
    network.apply_to(te, bundle.unet)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in network.named_parameters():
            if "lora_up" in name:
                p.copy_(torch.randn(p.shape, generator=g) * strength)
    network.save_weights(path)
    return path

"""The pretraining settings of the default model, apart from the training code so that
`tools/pretrain_default.py -h` needs no torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PretrainConfig:
    """Every choice that changes the weights (the manifest records them all)."""

    seed: int = 0
    pool: int = 8192  # captioned 64x64 scenes encoded once for the diffusion phase (flipped at random)
    norm_pool: int = 512  # scenes whose latents set the VAE's latent shift and scale
    steps: int = 5000
    batch: int = 16
    lr: float = 1.5e-3
    caption_dropout: float = 0.1  # empty caption: the unconditional branch that CFG needs
    # With small latents of mostly flat colour, the SD schedule's last step still leaks the image's mean colour
    # (signal std 0.07 at t=999 against a noise mean of std 1/16 on a 16x16 latent): a model trusts that leak and
    # draws the colour of the seed's noise, not the prompt's. A per-channel noise offset makes the leak unreliable.
    noise_offset: float = 0.25
    min_snr_gamma: float = 5.0
    ema: float = 0.995
    # share of captions that start with a word the scene does not show: an unknown word (the quickstart's "sks")
    # must not make the base forget the rest of the prompt
    filler_rate: float = 0.25
    threads: int = 1  # tiny models gain nothing from threads, and on a shared CPU OpenMP spin-waits cost 10x

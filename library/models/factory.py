"""Seeded random models from configs kept in the project: tiny ones for tests and the quickstart default,
real-shape ones (SD1.5, SD2.1, SDXL sizes) for benchmarks. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from library.models.arch import BOS, EOS, LATENT_SCALE, TIME_EMBED_DIM_SDXL
from library.models.bundle import ModelBundle

_SD_TYPES = dict(
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
)
_XL_TYPES = dict(
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
)


def _te(hidden: int, layers: int, mlp: int, openclip: bool, projection: int | None = None) -> dict:
    cfg = dict(vocab_size=49408, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
               num_attention_heads=max(1, hidden // 64), max_position_embeddings=77,
               hidden_act="gelu" if openclip else "quick_gelu", bos_token_id=BOS, eos_token_id=EOS,
               pad_token_id=0 if openclip else EOS)
    if projection:
        cfg["projection_dim"] = projection
    return cfg


def _vae(channels: list[int], layers: int, family: str) -> dict:
    return dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * len(channels),
                up_block_types=["UpDecoderBlock2D"] * len(channels), block_out_channels=channels,
                layers_per_block=layers, latent_channels=4, scaling_factor=LATENT_SCALE[family],
                sample_size=1024 if family == "sdxl" else 512)


def default_configs() -> dict:
    """The embedded default (`tools/pretrain_default.py`): SD1 blocks sized for 16x16 latents and CPU training --
    a 64-wide text encoder, a U-Net of three levels (32-64-64 channels, one res block each, cross-attention on
    the first two) and a 3-level VAE of 64 channels, so 4x downsampling (even channels, so every norm group holds
    a signal pair; see `library.default_model.vae`). About 6M parameters, half of them the 49408-token embedding;
    64x64 images, 16x16x4 latents."""
    cfg = configs("sd1", "tiny")
    cfg["unet"].update(down_block_types=["CrossAttnDownBlock2D"] * 2 + ["DownBlock2D"],
                       up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 2,
                       block_out_channels=[32, 64, 64], layers_per_block=1, cross_attention_dim=64,
                       sample_size=16)
    cfg["vae"] = _vae([64, 64, 64], 1, "sd1")
    cfg["text_encoders"] = [_te(64, 2, 256, openclip=False)]
    return cfg


def configs(family: str, size: str = "tiny", time_embed_dim: int = TIME_EMBED_DIM_SDXL) -> dict:
    """Configs for `unet`, `vae` and `text_encoders` of a family at `tiny` or `real` size; `time_embed_dim` is
    SDXL's width per size/crop number (256 in every released model; tests vary it)."""
    tiny = size == "tiny"
    if family in ("sd1", "sd2"):
        v2 = family == "sd2"
        width = (32 if v2 else 32) if tiny else (1024 if v2 else 768)
        channels = [32, 32, 64, 64] if tiny else [320, 640, 1280, 1280]
        unet = dict(**_SD_TYPES, block_out_channels=channels, layers_per_block=2, cross_attention_dim=width,
                    sample_size=8 if tiny else 64, use_linear_projection=v2,
                    attention_head_dim=[max(1, c // 64) for c in channels] if v2 else 8)
        te = _te(width, (3 if v2 else 2) if tiny else (23 if v2 else 12), 4 * width, openclip=v2)
        tes = [te]
    else:
        w1, w2 = (32, 32) if tiny else (768, 1280)
        channels = [32, 64, 64] if tiny else [320, 640, 1280]
        depth = [1, 1, 2] if tiny else [1, 2, 10]
        unet = dict(**_XL_TYPES, block_out_channels=channels, layers_per_block=2, cross_attention_dim=w1 + w2,
                    sample_size=8 if tiny else 128, use_linear_projection=True, transformer_layers_per_block=depth,
                    attention_head_dim=[max(1, c // 64) for c in channels], addition_embed_type="text_time",
                    addition_time_embed_dim=time_embed_dim,
                    projection_class_embeddings_input_dim=w2 + 6 * time_embed_dim)
        tes = [_te(w1, 2 if tiny else 12, 4 * w1, openclip=False),
               _te(w2, 2 if tiny else 32, 4 * w2, openclip=True, projection=w2)]
    vae = _vae([32, 32, 32, 32] if tiny else [128, 256, 512, 512], 1 if tiny else 2, family)
    return {"unet": unet, "vae": vae, "text_encoders": tes}


def random_bundle(family: str, size: str = "tiny", seed: int = 0, v_parameterization: bool = False,
                  dtype: torch.dtype | None = None, time_embed_dim: int = TIME_EMBED_DIM_SDXL) -> ModelBundle:
    """A ModelBundle with seeded random weights (deterministic for a torch version). `dtype` builds the models
    in that precision directly (a real-shape SDXL needs 14 GB in float32, 7 GB in float16)."""
    from library.tokenizer import load_tokenizers

    cfg = configs(family, size, time_embed_dim)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        unet = UNet2DConditionModel(**cfg["unet"]).eval()
        vae = AutoencoderKL(**cfg["vae"]).eval()
        tes = []
        for i, te in enumerate(cfg["text_encoders"]):
            cls = CLIPTextModelWithProjection if family == "sdxl" and i == 1 else CLIPTextModel
            tes.append(cls(CLIPTextConfig(**te)).eval())
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():  # default init leaves some layers zero; perturb so every weight matters in tests
        for model in (unet, vae, *tes):
            for p in model.parameters():
                if p.ndim >= 2 and p.abs().max() == 0:
                    p.normal_(0, 0.02)
    return ModelBundle(family, unet, vae, tes, load_tokenizers(family), {}, None, v_parameterization)


def write_random_checkpoint(path: str | Path, family: str, size: str = "tiny", seed: int = 0,
                            dtype: torch.dtype | None = None, time_embed_dim: int = TIME_EMBED_DIM_SDXL) -> Path:
    """Write a seeded random original-layout checkpoint (the embedded default and benchmark inputs)."""
    from library.models.single_file import save_single_file

    half = dtype if dtype in (torch.float16, torch.bfloat16) and size == "real" else None
    save_single_file(random_bundle(family, size, seed, dtype=half, time_embed_dim=time_embed_dim), path, dtype)
    return Path(path)

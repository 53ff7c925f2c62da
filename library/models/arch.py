"""Derive model configs from checkpoint keys and tensor shapes (no config files, no hub).

Channels, levels, res blocks per level, transformer depth, context width, time-embedding widths, kernel sizes
and text-encoder size all come from the tensors; only head counts are invisible in the weights and follow the
family convention (SD1: 8 heads; SD2/SDXL: 64-wide heads, at least one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from library.keys import unet as unet_keys
from library.keys.vae import vae_levels

SHAPES = Mapping[str, tuple[int, ...]]
LATENT_SCALE = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}


def vae_scale_factor(vae: object) -> int:
    """Pixels per latent cell along a side: 2 ** (levels - 1), 8 for every released SD VAE (the embedded default's
    3-level VAE: 4). Read from the loaded VAE's config, as Diffusers' pipelines do."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


TIME_EMBED_DIM_SDXL = 256  # released SDXL: each of the 6 size/crop numbers embedded 256 wide
BOS, EOS = 49406, 49407


def _heads(family: str, channels: int) -> int:
    return 8 if family == "sd1" else max(1, channels // 64)


def _depth(shapes: SHAPES, prefix: str) -> int:
    found = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(prefix) + r"transformer_blocks\.(\d+)\.", k))}
    return max(found) + 1 if found else 1


def sdxl_time_embed_dim(added_in: int, pooled_dim: int | None) -> int:
    """Width of each of SDXL's six size/crop embeddings: the added-conditioning input is the pooled text embedding
    plus 6 of them, so with the pooled width known (the second text encoder's projection) it is exact; without
    it the released 256 is assumed when it fits."""
    if pooled_dim is not None:
        rest = added_in - pooled_dim
        if rest <= 0 or rest % 6:
            raise ValueError(f"label_emb input width {added_in} is not pooled {pooled_dim} + 6 x time-embedding width")
        return rest // 6
    if added_in <= 6 * TIME_EMBED_DIM_SDXL:
        raise ValueError(f"label_emb input width {added_in} does not fit the default 6 x {TIME_EMBED_DIM_SDXL} "
                         "time embeddings and no text encoder gives the pooled width")
    return TIME_EMBED_DIM_SDXL


def unet_config(shapes: SHAPES, family: str, v_parameterization: bool = False, pooled_dim: int | None = None) -> dict:
    """Diffusers `UNet2DConditionModel` config from original U-Net keys (no `model.diffusion_model.`).
    `pooled_dim` (SDXL: the second text encoder's projection width) makes the time-embedding width exact."""
    layout = unet_keys.layout_from_original_keys(shapes)
    n = layout.layers_per_block
    channels = [shapes[f"input_blocks.{1 + (n + 1) * i}.0.out_layers.3.weight"][0] for i in range(layout.levels)]
    down_depth = [_depth(shapes, f"input_blocks.{1 + (n + 1) * i}.1.") for i in range(layout.levels)]
    up_depth = [_depth(shapes, f"output_blocks.{(n + 1) * i}.1.") for i in range(layout.levels)]
    attn_key = next(k for k in shapes if k.endswith("attn2.to_k.weight"))
    proj_in = next(k for k in shapes if k.endswith("proj_in.weight"))
    config = {
        "sample_size": {"sd1": 64, "sd2": 96 if v_parameterization else 64, "sdxl": 128}[family],
        "in_channels": shapes["input_blocks.0.0.weight"][1],
        "out_channels": shapes["out.2.weight"][0],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in layout.down_attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in layout.up_attention],
        "block_out_channels": channels,
        "layers_per_block": n,
        "cross_attention_dim": shapes[attn_key][1],
        "attention_head_dim": [_heads(family, c) for c in channels] if family != "sd1" else 8,
        "use_linear_projection": len(shapes[proj_in]) == 2,
        "transformer_layers_per_block": down_depth,
        "upcast_attention": family == "sd2" and v_parameterization,
    }
    time_width, c0 = shapes["time_embed.0.weight"][0], channels[0]
    if time_width != 4 * c0:
        config["time_embedding_dim"] = time_width
    if shapes["input_blocks.0.0.weight"][2] != 3:
        config["conv_in_kernel"] = shapes["input_blocks.0.0.weight"][2]
    if shapes["out.2.weight"][2] != 3:
        config["conv_out_kernel"] = shapes["out.2.weight"][2]
    if up_depth != list(reversed(down_depth)):
        config["reverse_transformer_layers_per_block"] = up_depth
    if not layout.mid_attention:
        config["mid_block_type"] = "UNetMidBlock2D"
    if layout.sdxl:
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=sdxl_time_embed_dim(shapes["label_emb.0.0.weight"][1], pooled_dim),
            projection_class_embeddings_input_dim=shapes["label_emb.0.0.weight"][1],
        )
    return config


def vae_config(shapes: SHAPES, family: str) -> dict:
    """Diffusers `AutoencoderKL` config from original VAE keys (no `first_stage_model.`)."""
    levels = vae_levels(shapes)
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
    return {
        "in_channels": shapes["encoder.conv_in.weight"][1],
        "out_channels": shapes["decoder.conv_out.weight"][0],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [shapes[f"encoder.down.{i}.block.0.conv2.weight"][0] for i in range(levels)],
        "layers_per_block": layers,
        "latent_channels": shapes["decoder.conv_in.weight"][1],
        "sample_size": 1024 if family == "sdxl" else 512,
        "scaling_factor": LATENT_SCALE[family],
    }


def clip_config(shapes: SHAPES, openclip_layout: bool, pad_token_id: int, with_projection: bool = False) -> dict:
    """transformers `CLIPTextConfig` kwargs from canonical HF CLIP keys (with `text_model.`)."""
    hidden = shapes["text_model.embeddings.token_embedding.weight"][1]
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k)))
    config = {
        "vocab_size": shapes["text_model.embeddings.token_embedding.weight"][0],
        "hidden_size": hidden,
        "intermediate_size": shapes["text_model.encoder.layers.0.mlp.fc1.weight"][0],
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": shapes["text_model.embeddings.position_embedding.weight"][0],
        "hidden_act": "gelu" if openclip_layout else "quick_gelu",
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": pad_token_id,
    }
    if with_projection:
        config["projection_dim"] = shapes["text_projection.weight"][0]
    return config

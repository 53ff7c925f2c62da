"""VAE names: original (LDM) keys <-> Diffusers `AutoencoderKL` keys.

LDM stores the mid-block attention projections as 1x1 convs; Diffusers as Linear. `needs_reshape` tells
the converter which keys change between `[C, C, 1, 1]` and `[C, C]`.
"""

from __future__ import annotations

import re

_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_ATTN_REV = {v: k for k, v in _ATTN.items()}
_SIMPLE = {"norm_out": "conv_norm_out", "nin_shortcut": "conv_shortcut"}


def vae_levels(keys) -> int:  # noqa: ANN001 - any iterable of original VAE keys
    """Number of resolution levels, read from `encoder.down.N` keys."""
    return 1 + max(int(m.group(1)) for k in keys if (m := re.match(r"encoder\.down\.(\d+)\.", k)))


def original_to_diffusers(key: str, levels: int) -> str:
    """Original VAE key (no `first_stage_model.` prefix) to its Diffusers name."""
    k = key
    k = re.sub(r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2.", k)
    k = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", k)
    k = re.sub(r"^decoder\.up\.(\d+)\.block\.(\d+)\.",
               lambda m: f"decoder.up_blocks.{levels - 1 - int(m.group(1))}.resnets.{m.group(2)}.", k)
    k = re.sub(r"^decoder\.up\.(\d+)\.upsample\.",
               lambda m: f"decoder.up_blocks.{levels - 1 - int(m.group(1))}.upsamplers.0.", k)
    k = re.sub(r"^(encoder|decoder)\.mid\.block_(\d)\.", lambda m: f"{m.group(1)}.mid_block.resnets.{int(m.group(2)) - 1}.", k)
    m = re.match(r"^(encoder|decoder)\.mid\.attn_1\.(\w+)\.(weight|bias)$", k)
    if m:
        return f"{m.group(1)}.mid_block.attentions.0.{_ATTN[m.group(2)]}.{m.group(3)}"
    for old, new in _SIMPLE.items():
        k = re.sub(rf"(^|\.){old}\.", rf"\g<1>{new}.", k)
    return k


def diffusers_to_original(key: str, levels: int) -> str:
    """Diffusers VAE key to its original (LDM) name."""
    k = key
    m = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)$", k)
    if m:
        return f"{m.group(1)}.mid.attn_1.{_ATTN_REV[m.group(2)]}.{m.group(3)}"
    k = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", k)
    k = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
    k = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
               lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.block.{m.group(2)}.", k)
    k = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
               lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.", k)
    k = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.", lambda m: f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.", k)
    for old, new in _SIMPLE.items():
        k = re.sub(rf"(^|\.){new}\.", rf"\g<1>{old}.", k)
    return k


def needs_reshape(original_key: str) -> bool:
    """True for the mid attention q/k/v/proj_out weights stored as 1x1 convs in LDM."""
    return bool(re.match(r"^(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", original_key))

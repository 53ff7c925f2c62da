"""Text-encoder names: OpenCLIP layout (SD2 TE, SDXL te2) <-> Hugging Face CLIP layout.

Canonical HF names here always carry the `text_model.` level, as the checkpoints and every LoRA loader
expect; `for_model` adapts them to a transformers module tree that drops it (CLIPTextModel in 5.x).
OpenCLIP packs q, k, v into one `in_proj` tensor, in that order.
"""

from __future__ import annotations

import re

import torch

_LAYER = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_LAYER_REV = {v: k for k, v in _LAYER.items()}
QKV = ("q_proj", "k_proj", "v_proj")


def openclip_layers(sd: dict[str, torch.Tensor]) -> int:
    """Number of transformer blocks in an OpenCLIP state dict (keys without the model prefix)."""
    return 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k)))


def openclip_to_hf(sd: dict[str, torch.Tensor], num_layers: int | None = None) -> tuple[dict, dict]:
    """Convert an OpenCLIP text tower to HF names; returns (converted, unused) state dicts.

    Blocks at index >= num_layers, `logit_scale` and (when num_layers is given, i.e. SD2) `text_projection`
    are returned unused so a save can write them back untouched.
    """
    out: dict[str, torch.Tensor] = {}
    unused: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", k)
        if m:
            n, rest = int(m.group(1)), m.group(2)
            if num_layers is not None and n >= num_layers:
                unused[k] = v
                continue
            base = f"text_model.encoder.layers.{n}."
            if rest.startswith("attn.in_proj_"):
                kind = rest[len("attn.in_proj_"):]
                for name, part in zip(QKV, v.chunk(3, dim=0)):
                    out[f"{base}self_attn.{name}.{kind}"] = part.clone()
                continue
            head, kind = rest.rsplit(".", 1)
            out[base + _LAYER[head] + "." + kind] = v
        elif k == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = v
        elif k == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = v
        elif k.startswith("ln_final."):
            out["text_model.final_layer_norm." + k.split(".", 1)[1]] = v
        elif k == "text_projection" and num_layers is None:
            out["text_projection.weight"] = v.t().contiguous()
        else:
            unused[k] = v
    return out, unused


def hf_to_openclip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `openclip_to_hf` for the converted part (q, k, v re-packed into in_proj)."""
    out: dict[str, torch.Tensor] = {}
    packed: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        k = canonical(k)
        m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", k)
        if m:
            n, head, kind = m.groups()
            base = f"transformer.resblocks.{n}."
            if head.startswith("self_attn.") and head[len("self_attn."):] in QKV:
                packed.setdefault(f"{base}attn.in_proj_{kind}", {})[head[len("self_attn."):]] = v
            else:
                out[base + _LAYER_REV[head] + "." + kind] = v
        elif k == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = v
        elif k == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = v
        elif k.startswith("text_model.final_layer_norm."):
            out["ln_final." + k.rsplit(".", 1)[1]] = v
        elif k == "text_projection.weight":
            out["text_projection"] = v.t().contiguous()
        elif k.endswith("position_ids"):
            continue
        else:
            raise KeyError(k)
    for k, parts in packed.items():
        out[k] = torch.cat([parts[n] for n in QKV], dim=0)
    return out


def canonical(key: str) -> str:
    """HF CLIP key with the `text_model.` level (added if a transformers-5 tree dropped it)."""
    if key.startswith(("text_model.", "text_projection", "logit_scale")):
        return key
    return "text_model." + key


def for_model(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename canonical HF CLIP keys to the names `model.state_dict()` uses; drops `position_ids`."""
    has_level = any(k.startswith("text_model.") for k in model.state_dict())
    out = {}
    for k, v in sd.items():
        if k.endswith("position_ids"):
            continue
        out[k if has_level or not k.startswith("text_model.") else k[len("text_model."):]] = v
    return out

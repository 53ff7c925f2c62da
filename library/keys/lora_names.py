"""kohya LoRA names <-> Diffusers module paths <-> original checkpoint keys.

A kohya name is `prefix + "_" + module path` with dots replaced by underscores. SD1/SD2 U-Net names use
Diffusers paths, SDXL U-Net names use original (SAI) paths, text-encoder names always contain
`text_model_encoder_layers_N_`. Underscore names cannot be parsed back unambiguously, so reverse lookups are
tables built from the real keys of a checkpoint or the real modules of a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from library.keys import clip, unet
from library.keys.families import UNET_PREFIX, te_specs


@dataclass(frozen=True)
class Target:
    """Where a LoRA module lands in an original checkpoint: a weight key, maybe a row slice of it."""

    key: str
    rows: tuple[int, int] | None = None
    group: str | None = None  # "lierla" (trained by default), "c3lier" (only with conv_dim) or None


def unet_group(diffusers_path: str, ndim: int, kernel: int) -> str | None:
    """Which LoRA kind trains this U-Net module (sd-scripts' class rules, applied to the Diffusers path)."""
    if ".attentions." in diffusers_path and (ndim == 2 or kernel == 1) and ".norm" not in diffusers_path:
        return "lierla"
    if ".resnets." in diffusers_path or diffusers_path.endswith(("samplers.0.conv",)):
        if ndim >= 2 and ".norm" not in diffusers_path:
            return "c3lier"
    return None


def underscore(path: str) -> str:
    return path.replace(".", "_")


def unet_lora_name(diffusers_path: str, layout: unet.UNetLayout) -> str:
    """kohya name of a U-Net module given its Diffusers path (SDXL names use the original path)."""
    path = unet.diffusers_to_original(diffusers_path, layout) if layout.sdxl else diffusers_path
    return "lora_unet_" + underscore(path)


def te_lora_name(prefix: str, hf_module_path: str) -> str:
    """kohya name of a text-encoder module; the `text_model` level is always written."""
    return prefix + "_" + underscore(clip.canonical(hf_module_path))


def checkpoint_targets(shapes: dict[str, tuple[int, ...]], family: str) -> dict[str, Target]:
    """Map every LoRA-able name of an original-layout checkpoint to its weight key (and row slice).

    `shapes` maps original keys to tensor shapes; only weights with two or more dimensions are listed.
    """
    targets: dict[str, Target] = {}
    unet_keys = [k[len(UNET_PREFIX):] for k in shapes if k.startswith(UNET_PREFIX)]
    if unet_keys:
        layout = unet.layout_from_original_keys(unet_keys)
        for k in unet_keys:
            if not k.endswith(".weight") or len(shapes[UNET_PREFIX + k]) < 2:
                continue
            path = k[: -len(".weight")]
            try:
                dpath = unet.original_to_diffusers(path, layout)
            except KeyError:
                continue
            shape = shapes[UNET_PREFIX + k]
            group = unet_group(dpath, len(shape), shape[-1] if len(shape) == 4 else 1)
            targets[unet_lora_name(dpath, layout)] = Target(UNET_PREFIX + k, None, group)
    last_block = {}
    for spec in te_specs(family):
        blocks = [int(m.group(1)) for k in shapes
                  if (m := re.match(re.escape(spec.ckpt_prefix) + r"transformer\.resblocks\.(\d+)\.", k))]
        last_block[spec.ckpt_prefix] = max(blocks, default=-1)
    for spec in te_specs(family):
        for key, shape in shapes.items():
            if not key.startswith(spec.ckpt_prefix) or len(shape) < 2:
                continue
            rest = key[len(spec.ckpt_prefix):]
            if spec.layout == "hf":
                if rest.startswith("text_model.encoder.layers.") and rest.endswith(".weight"):
                    if re.search(r"\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])\.weight$", rest):
                        targets[te_lora_name(spec.lora_prefix, rest[: -len(".weight")])] = Target(key, None, "lierla")
                continue
            m = re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", rest)
            if not m or (family == "sd2" and int(m.group(1)) == last_block.get(spec.ckpt_prefix)):
                continue  # SD2 runs 23 of 24 OpenCLIP blocks: the last one never has a LoRA
            base = f"text_model.encoder.layers.{m.group(1)}."
            if m.group(2) == "attn.in_proj_weight":
                d = shape[0] // 3
                for i, name in enumerate(clip.QKV):
                    targets[te_lora_name(spec.lora_prefix, base + "self_attn." + name)] = Target(key, (i * d, (i + 1) * d), "lierla")
            elif m.group(2).endswith(".weight"):
                head = m.group(2)[: -len(".weight")]
                hf = {"attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}.get(head)
                if hf:
                    targets[te_lora_name(spec.lora_prefix, base + hf)] = Target(key, None, "lierla")
    return targets


def module_name(key: str) -> str:
    """`x.lora_down.weight` -> `x`: the module part of a LoRA file key."""
    return key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0]


def family_of_lora(names) -> str | None:  # noqa: ANN001 - iterable of module names
    """Guess the model family a LoRA was made for from its names (None when nothing tells)."""
    names = list(names)
    if any(n.startswith(("lora_te1_", "lora_te2_")) for n in names):
        return "sdxl"
    if any(re.match(r"lora_unet_(input_blocks|output_blocks|middle_block)_", n) for n in names):
        return "sdxl"
    if any(n.startswith("lora_unet_") or n.startswith("lora_te_") for n in names):
        return "sd"
    return None

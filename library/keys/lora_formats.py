"""LoRA file keys of the three formats, all translated through one name: (component, Diffusers module path).

* kohya: `lora_unet_<path>` / `lora_te[1|2]_<path>` with dots as underscores (SDXL U-Net: original SAI path),
  then `.lora_down.weight`, `.lora_up.weight`, `.alpha`.
* Diffusers (what diffusers' kohya converter and its training scripts write): `unet.<path>.lora.down.weight`,
  text encoders `text_encoder.<path>.lora_linear_layer.down.weight` (`.up.` for up); alpha has no key, it lives
  in the `lora_adapter_metadata` header entry (a PEFT `LoraConfig` per component).
* PEFT (`get_peft_model_state_dict`, packed per component as diffusers' `save_lora_weights` does):
  `unet.<path>.lora_A.weight` / `lora_B.weight`; a PEFT adapter folder has `base_model.model.<path>` keys.

Underscore names are parsed with the vocabulary of multi-word module names below (greedy, longest first) and
checked against the U-Net block table, so a name that is not an SD module is reported, never guessed.
"""

from __future__ import annotations

import re

from library.keys import clip, unet
from library.keys.lora_names import te_lora_name, underscore
from library.options.choices import LORA_FORMATS

FORMATS = LORA_FORMATS  # kohya, diffusers, peft
UNET, TE, TE2 = "unet", "text_encoder", "text_encoder_2"
COMPONENTS = (UNET, TE, TE2)

SD_LAYOUT = unet.UNetLayout(down_attention=(True, True, True, False), up_attention=(False, True, True, True),
                            layers_per_block=2)
SDXL_LAYOUT = unet.UNetLayout(down_attention=(False, True, True), up_attention=(True, True, False),
                              layers_per_block=2, sdxl=True)

# module-path parts that contain underscores (Diffusers U-Net, SAI U-Net, HF CLIP, OpenCLIP)
_WORDS = {
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out", "to_qkv",
    "proj_in", "proj_out", "conv_shortcut", "time_emb_proj", "conv_in", "conv_out", "conv_norm_out",
    "time_embedding", "linear_1", "linear_2", "add_embedding", "input_blocks", "output_blocks", "middle_block",
    "in_layers", "out_layers", "emb_layers", "skip_connection", "time_embed", "label_emb", "text_model",
    "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "final_layer_norm", "text_projection",
    "c_fc", "c_proj",
}
_WORD_TOKENS = sorted((tuple(w.split("_")) for w in _WORDS), key=len, reverse=True)

# fused projections whose change is split by rows into separate modules (q, k, v order, as OpenCLIP packs them)
FUSED = {"self_attn.in_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "attn1.to_qkv": ("attn1.to_q", "attn1.to_k", "attn1.to_v")}
_OPENCLIP = {"attn.in_proj": "self_attn.in_proj", "attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1",
             "mlp.c_proj": "mlp.fc2"}

_ROLES = (  # (suffix regex, role); the module key is what precedes the suffix
    (r"\.lora_down\.weight", "down"), (r"\.lora_up\.weight", "up"),
    (r"\.lora\.down\.weight", "down"), (r"\.lora\.up\.weight", "up"),
    (r"\.lora_linear_layer\.down\.weight", "down"), (r"\.lora_linear_layer\.up\.weight", "up"),
    (r"\.lora_A(?:\.default)?\.weight", "down"), (r"\.lora_B(?:\.default)?\.weight", "up"),
    (r"_lora\.down\.weight", "down_old"), (r"_lora\.up\.weight", "up_old"),
    (r"\.alpha", "alpha"),
)
_ROLE_RE = [(re.compile(f"^(.+?){pattern}$"), role) for pattern, role in _ROLES]


def dotted(name: str) -> str:
    """`down_blocks_0_attentions_0_proj_in` -> `down_blocks.0.attentions.0.proj_in` (vocabulary-driven)."""
    tokens, parts, i = name.split("_"), [], 0
    while i < len(tokens):
        for word in _WORD_TOKENS:
            if tuple(tokens[i:i + len(word)]) == word:
                parts.append("_".join(word))
                i += len(word)
                break
        else:
            parts.append(tokens[i])
            i += 1
    return ".".join(parts)


def layout_for(sdxl: bool) -> unet.UNetLayout:
    return SDXL_LAYOUT if sdxl else SD_LAYOUT


def _known_unet_path(path: str, layout: unet.UNetLayout) -> bool:
    try:
        unet.diffusers_to_original(path, layout)
    except KeyError:
        return False
    return True


def te_path(path: str) -> str | None:
    """Canonical HF CLIP module path (`text_model.encoder.layers.N...`) of a text-encoder module, from HF paths
    with or without `text_model.` or OpenCLIP paths (`transformer.resblocks.N.attn.in_proj`); None if unknown."""
    m = re.fullmatch(r"(?:model\.)?transformer\.resblocks\.(\d+)\.(.+)", path)
    if m:
        inner = _OPENCLIP.get(m.group(2))
        return f"text_model.encoder.layers.{m.group(1)}.{inner}" if inner else None
    path = clip.canonical(path)
    if re.fullmatch(r"text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out|in)_proj|mlp\.fc[12])", path):
        return path
    return path if path == "text_projection" else None


def unet_path(path: str, sdxl: bool) -> str | None:
    """Diffusers U-Net module path from a Diffusers or original (SAI) path; None if no SD U-Net has it."""
    if path.startswith(("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "label_emb.", "out.")):
        try:
            path = unet.original_to_diffusers(path, layout_for(sdxl))
        except KeyError:
            return None
    return path if _known_unet_path(path, layout_for(sdxl)) else None


def kohya_to_module(name: str, sdxl: bool) -> tuple[str, str] | None:
    """kohya module name -> (component, Diffusers module path); None when it names no SD module."""
    m = re.match(r"lora_(unet|te1|te2|te)_(.+)$", name)
    if not m:
        return None
    path = dotted(m.group(2))
    if m.group(1) == "unet":
        found = unet_path(path, sdxl)
        return (UNET, found) if found else None
    found = te_path(path)
    return ((TE2 if m.group(1) == "te2" else TE), found) if found else None


def module_to_kohya(component: str, path: str, sdxl: bool) -> str:
    """(component, Diffusers path) -> kohya module name (SDXL U-Net names use the original SAI path)."""
    if component == UNET:
        return "lora_unet_" + underscore(unet.diffusers_to_original(path, SDXL_LAYOUT) if sdxl else path)
    prefix = "lora_te2" if component == TE2 else ("lora_te1" if sdxl else "lora_te")
    return te_lora_name(prefix, path)


def split_key(key: str) -> tuple[str, str] | None:
    """A LoRA file key -> (module key, role); role is down, up or alpha; None for keys of no LoRA factor."""
    key = key.replace(".processor.", ".")
    for pattern, role in _ROLE_RE:
        m = pattern.match(key)
        if m:
            module = m.group(1)
            if role.endswith("_old"):  # `attn1.processor.to_q_lora.down.weight` (diffusers' attention processors)
                module = re.sub(r"\.to_out$", ".to_out.0", module)
                role = role[:-4]
            return module, role
    return None


def module_of_key(module_key: str, sdxl: bool) -> tuple[str, str] | None:
    """`unet.<path>` / `text_encoder.<path>` / `base_model.model.<path>` / bare `<path>` -> (component, path)."""
    key = module_key.removeprefix("base_model.model.")
    component = next((c for c in (TE2, TE, UNET) if key.startswith(c + ".")), None)
    if component is not None:
        key = key[len(component) + 1:]
        found = unet_path(key, sdxl) if component == UNET else te_path(key)
        return (component, found) if found else None
    found = te_path(key)
    if found:
        return TE, found
    found = unet_path(key, sdxl)
    return (UNET, found) if found else None


def file_keys(fmt: str, component: str, path: str) -> tuple[str, str]:
    """(down key, up key) of one module in a Diffusers or PEFT file."""
    base = f"{component}.{path}"
    if fmt == "peft":
        return f"{base}.lora_A.weight", f"{base}.lora_B.weight"
    if component == UNET:
        return f"{base}.lora.down.weight", f"{base}.lora.up.weight"
    return f"{base}.lora_linear_layer.down.weight", f"{base}.lora_linear_layer.up.weight"


def pattern_path(component: str, path: str) -> str:
    """The module path as written in a `LoraConfig` rank/alpha pattern: text-encoder paths drop `text_model.`
    so the pattern matches both transformers module trees (PEFT matches patterns as path suffixes)."""
    return path.removeprefix("text_model.") if component != UNET else path


def fused_parts(path: str) -> tuple[str, ...] | None:
    """Paths of the modules a fused projection splits into (q, k, v), or None."""
    for fused, parts in FUSED.items():
        if path.endswith("." + fused):
            head = path[: -len(fused)]
            return tuple(head + p for p in parts)
    return None


def is_sdxl_unet_path(path: str) -> bool | None:
    """What a Diffusers U-Net path tells about SDXL (attention blocks sit at other levels); None if nothing."""
    if re.match(r"(down_blocks\.0|up_blocks\.3)\.attentions\.", path):
        return False
    if re.match(r"up_blocks\.0\.attentions\.|add_embedding\.", path):
        return True
    return None

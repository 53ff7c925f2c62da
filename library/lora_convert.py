"""Convert LoRA files between the kohya, Diffusers and PEFT formats without touching the numbers.

LyCORIS modules (LoHa, LoKr, Tucker LoCon, full, DoRA) are first turned into plain LoRAs, exactly or at a chosen
rank, so that diffusers and PEFT can load them (they read neither hada_/lokr_ keys nor kohya's dora_scale).

Every module is read as stored (down, up, alpha, per-module rank), named by (component, Diffusers module path)
through `library.keys.lora_formats`, and written in the target's names; only a fused projection (OpenCLIP's
`in_proj`, a fused `to_qkv`) is split by rows into q, k and v, which is exact (the down factor is shared).
Alpha travels as kohya's `.alpha` tensors or as the PEFT `LoraConfig` (rank/alpha patterns) that diffusers
stores in the `lora_adapter_metadata` header entry and PEFT in `adapter_config.json`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from library import adapters
from library.adapters.equivalent import BaseLookup, Conversion, layer_shape, lora_state_dict, needs_lora_form
from library.adapters.peft import PEFT_TYPES, NotInPeft, kohya_modules, peft_modules
from library.errors import ToolkitError
from library.files import load_state_dict, save_state_dict
from library.keys import family_of_lora
from library.keys import lora_formats as lf
from library.lora_io import LoRAFactors, modules_to_state_dict, save_lora
from library.metadata import base_model_version, family_from_metadata

log = logging.getLogger(__name__)
ADAPTER_META = "lora_adapter_metadata"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass
class Entry:
    """One LoRA module: its factors, where it lands (None when no SD module has that name) and its input name."""

    factors: LoRAFactors
    component: str | None
    path: str | None
    source: str


@dataclass
class LoRAFile:
    """A LoRA read from any format: modules, header metadata, the detected format and SDXL-ness."""

    entries: list[Entry]
    metadata: dict[str, str]
    fmt: str
    sdxl: bool
    ignored: list[str]  # left out: stray tensors, modules holding more than a LoRA (DoRA, Tucker cores, biases)
    conversion: Conversion | None = None  # LyCORIS modules turned into plain LoRAs on reading


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], dict | None]:
    """(tensors, header metadata, PEFT adapter config or None) of a LoRA file or a PEFT adapter folder."""
    config_file = path / "adapter_config.json" if path.is_dir() else path.with_name("adapter_config.json")
    if path.is_dir():
        weights = next((path / n for n in PEFT_WEIGHTS if (path / n).is_file()), None)
        if weights is None:
            raise ToolkitError(f"{path}: a folder, but not a PEFT adapter (no adapter_model.safetensors)")
        path = weights
    sd, meta = load_state_dict(path)
    config = None
    if path.name in PEFT_WEIGHTS and config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as e:
            raise ToolkitError(f"{config_file}: not valid JSON ({e})") from None
    return dict(sd), dict(meta), config


def detect_format(keys: list[str]) -> str | None:
    """kohya (`lora_unet_…lora_down`), diffusers (`.lora.down`, `lora_linear_layer`) or peft (`lora_A`)."""
    if any(re.match(r"lora_(unet|te[12]?)_.+\.lora_down\.weight$", k) for k in keys):
        return "kohya"
    if any(re.search(r"(\.lora\.|_lora\.|\.lora_linear_layer\.)(down|up)\.weight$", k) for k in keys):
        return "diffusers"
    if any(re.search(r"\.lora_[AB](\.default)?\.weight$", k) for k in keys):
        return "peft"
    return None


def _is_sdxl(fmt: str, module_keys: list[str], metadata: Mapping[str, str]) -> bool:
    family = family_from_metadata(dict(metadata))
    if family:
        return family == "sdxl"
    if fmt == "kohya":
        if any(k.startswith(("lora_te1_", "lora_te2_")) or re.match(r"lora_unet_output_blocks_[0-2]_1_", k)
               for k in module_keys):
            return True
        if any(re.match(r"lora_unet_(input_blocks_[12]_1|output_blocks_(9|10|11)_1)_", k) for k in module_keys):
            return False
    votes = set()
    for k in module_keys:
        if k.startswith(("text_encoder_2.", "lora_te2_")):
            return True
        k = k.removeprefix("base_model.model.").removeprefix("unet.").removeprefix("lora_unet_")
        vote = lf.is_sdxl_unet_path(lf.dotted(k) if "." not in k else k)
        if vote is not None:
            votes.add(vote)
    return votes == {True}


def _pattern_value(patterns: Mapping[str, object], paths: tuple[str, ...]) -> object | None:
    """PEFT's rule: a pattern matches a module whose path ends with it (at a dot boundary)."""
    for key, value in patterns.items():
        for p in paths:
            if re.match(rf"(.*\.)?({key.lstrip('^')})$", p):
                return value
    return None


def _peft_configs(metadata: Mapping[str, str], adapter_config: dict | None, path: Path) -> dict[str | None, dict]:
    """LoraConfig dicts per component (None: one config for every component, as in a PEFT adapter folder)."""
    if adapter_config is not None:
        return {None: adapter_config}
    raw = metadata.get(ADAPTER_META)
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError:
        raise ToolkitError(f"{path}: the {ADAPTER_META} header entry is not valid JSON") from None
    configs: dict[str | None, dict] = {}
    for key, value in packed.items():
        component, _, field = key.partition(".")
        configs.setdefault(component, {})[field] = value
    return configs


def _alpha_from_config(config: dict, component: str | None, path: str | None, rank: int) -> float:
    """kohya alpha giving the same scale as the PEFT config (rsLoRA's alpha/√r becomes alpha·√r/r)."""
    paths = () if path is None else (path, lf.pattern_path(component or lf.TE, path))
    alpha = _pattern_value(config.get("alpha_pattern") or {}, paths)
    if alpha is None:
        alpha = config.get("lora_alpha", rank)
    alpha = float(alpha)
    return alpha * math.sqrt(rank) if config.get("use_rslora") else alpha


def _group(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, list[str]], list[str]]:
    """(factors by module key and role, extra tensors of a module such as DoRA magnitudes or Tucker cores,
    tensors belonging to no module)."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    other = []
    for key, value in sd.items():
        split = lf.split_key(key)
        if split is None:
            other.append(key)
        else:
            parts.setdefault(split[0], {})[split[1]] = value
    extras: dict[str, list[str]] = {}
    loose = []
    by_length = sorted(parts, key=len, reverse=True)
    for key in other:
        owner = next((p for p in by_length if key.startswith(p + ".")), None)
        if owner is None:
            loose.append(key)
        else:
            extras.setdefault(owner, []).append(key[len(owner) + 1:])
    return parts, extras, loose


def read_lora(path: str | os.PathLike, rank: int | None = None, base: BaseLookup | None = None) -> LoRAFile:
    """Read a kohya, Diffusers or PEFT LoRA (file, or PEFT adapter folder); the format comes from the keys.

    kohya-named LyCORIS modules (LoHa, LoKr, Tucker LoCon, full, DoRA with `base`) become plain LoRAs: exact, or
    the best rank-`rank` approximation (`LoRAFile.conversion` says what that cost)."""
    path = _existing(path)
    return _lora_file(path, *_read_tensors(path), rank, base)


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise ToolkitError(f"{path}: file not found")
    return path


def _lora_file(path: Path, sd: dict[str, torch.Tensor], metadata: dict[str, str], adapter_config: dict | None,
               rank: int | None, base: BaseLookup | None) -> LoRAFile:
    """`read_lora` of tensors already read from `path`."""
    sd = _kohya_from_peft_lycoris(sd, metadata, adapter_config, path)
    conversion = None
    if needs_lora_form(sd) and any(re.match(r"lora_(unet|te[12]?)_", k) for k in sd):
        sdxl = family_of_lora({k.partition(".")[0] for k in sd}) == "sdxl"
        sd, conversion = lora_state_dict(sd, base, sdxl, str(path), rank)
    fmt = detect_format(list(sd))
    if fmt is None:
        raise ToolkitError(f"{path}: not a LoRA file (no lora_down/lora_up, lora.down/up or lora_A/lora_B tensors)")
    parts, extras, ignored = _group(sd)
    sdxl = _is_sdxl(fmt, list(parts), metadata)
    configs = _peft_configs(metadata, adapter_config, path)
    entries = []
    for module_key, roles in parts.items():
        if "down" not in roles or "up" not in roles:
            if set(roles) != {"alpha"}:
                raise ToolkitError(f"{path}: module {module_key} has a down factor without its up factor or the reverse")
            continue
        if module_key in extras:  # DoRA magnitudes, Tucker cores, biases: more than a LoRA can hold
            ignored.append(f"{module_key} (has {', '.join(extras[module_key])}: not a plain LoRA)")
            continue
        down, up = roles["down"], roles["up"]
        if up.shape[1] != down.shape[0]:
            raise ToolkitError(f"{path}: module {module_key}: up has {up.shape[1]} columns, down {down.shape[0]} rows")
        where = lf.kohya_to_module(module_key, sdxl) if fmt == "kohya" else lf.module_of_key(module_key, sdxl)
        component, mpath = where if where else (None, None)
        rank = down.shape[0]
        if "alpha" in roles:
            alpha = float(roles["alpha"])
        elif fmt != "kohya" and configs:
            alpha = _alpha_from_config(configs.get(component) or configs.get(None) or {}, component, mpath, rank)
        else:
            alpha = float(rank)
        factors = LoRAFactors(down, up, alpha if alpha != 0 else float(rank))
        entries.extend(_split_fused(Entry(factors, component, mpath, module_key)))
    if fmt != "kohya" and not configs and not any("alpha" in r for r in parts.values()):
        log.warning("%s: no alpha stored (no %s or adapter_config.json): alpha = rank (scale 1), as diffusers "
                    "assumes", path, ADAPTER_META)
    return LoRAFile(entries, metadata, fmt, sdxl, ignored, conversion)


# a tensor of every LoHa or LoKr module, whatever its variant
LOHA_LOKR_KEYS = (".hada_w1_a", ".lokr_w1", ".lokr_w1_a")


def _is_peft_lycoris(sd: Mapping[str, torch.Tensor]) -> bool:
    """PEFT-named LoHa/LoKr tensors (`<path>.hada_w1_a`, `<path>.lokr_w1` …, not kohya `lora_unet_…` names)."""
    return any(k.endswith(LOHA_LOKR_KEYS) and not re.match(r"lora_(unet|te[12]?)_", k) for k in sd)


def _kohya_from_peft_lycoris(sd: dict[str, torch.Tensor], metadata: Mapping[str, str], adapter_config: dict | None,
                             path: Path) -> dict[str, torch.Tensor]:
    """A PEFT LoHa/LoKr state dict renamed to kohya's LyCORIS keys with alphas giving PEFT's scale (alpha/r per
    module from the LoHaConfig/LoKrConfig); any other state dict unchanged."""
    if not _is_peft_lycoris(sd):
        return sd
    groups = adapters.group_modules(sd)
    sdxl = _is_sdxl("peft", list(groups), metadata)
    configs = _peft_configs(metadata, adapter_config, path)
    if not configs:
        log.warning("%s: no LoHaConfig/LoKrConfig stored (%s or adapter_config.json): alpha = rank (scale 1)", path,
                    ADAPTER_META)
    named, ranks, alphas = {}, {}, {}
    for key, tensors in groups.items():
        where = lf.module_of_key(key, sdxl)
        if where is None:
            raise ToolkitError(f"{path}: module {key} names no Stable Diffusion layer")
        name = lf.module_to_kohya(*where, sdxl)
        config = configs.get(where[0]) or configs.get(None) or {}
        paths = (where[1], lf.pattern_path(*where))
        rank = _pattern_value(config.get("rank_pattern") or {}, paths) or config.get("r") or \
            adapters.rank_of(tensors) or 1
        alpha = _pattern_value(config.get("alpha_pattern") or {}, paths)
        named[name], ranks[name] = tensors, int(rank)
        alphas[name] = float(alpha if alpha is not None else config.get("alpha", rank))
    return {f"{n}.{k}": v for n, t in kohya_modules(named, ranks, alphas).items() for k, v in t.items()}


def _write_peft_lycoris(sd: Mapping[str, torch.Tensor], dst: Path, metadata: Mapping[str, str],
                        dtype: torch.dtype | None, src: str | os.PathLike) -> int | None:
    """Write kohya-named LoHa/LoKr modules as PEFT LoHa/LoKr (`<component>.<path>.hada_w1_a` …, the config per
    component in the lora_adapter_metadata header); None (one warning) when PEFT cannot hold the file."""
    groups = adapters.group_modules(sd)
    sdxl = family_of_lora(set(groups)) == "sdxl"
    by_component: dict[str, dict[str, tuple[str, dict, tuple[int, ...]]]] = {}  # kohya name -> (path, …)
    try:
        for name, tensors in groups.items():
            where = lf.kohya_to_module(name, sdxl)
            if where is None:
                raise NotInPeft(f"module {name} names no Stable Diffusion layer")
            if lf.fused_parts(where[1]):
                raise NotInPeft(f"module {name}: a fused q/k/v projection, which PEFT's modules do not split")
            by_component.setdefault(where[0], {})[name] = (where[1], tensors, layer_shape(name, tensors, None, sdxl))
        out: dict[str, torch.Tensor] = {}
        packed: dict[str, object] = {}
        algo = None
        for component, mods in by_component.items():
            algo, tensors, config = peft_modules({n: m[1] for n, m in mods.items()}, {n: m[2] for n, m in mods.items()})
            pattern = {n: lf.pattern_path(component, m[0]) for n, m in mods.items()}
            config["target_modules"] = sorted(pattern.values())
            for key in ("rank_pattern", "alpha_pattern"):
                config[key] = {pattern[n]: v for n, v in config[key].items()}
            packed.update({f"{component}.{k}": v for k, v in config.items()})
            for n, (path, _, _) in mods.items():
                out.update({f"{component}.{path}.{k}": v for k, v in tensors[n].items()})
    except NotInPeft as e:
        log.warning("%s: %s; written as a plain LoRA instead (--rank sets its rank)", Path(src).name, e)
        return None
    meta = {k: v for k, v in metadata.items() if k != ADAPTER_META and not k.startswith("sshs_")}
    meta.update({"format": "pt", ADAPTER_META: json.dumps(packed, indent=2, sort_keys=True)})
    save_state_dict(out, dst, meta, dtype=dtype)
    log.info("%s: %d %s modules written as PEFT %s", Path(src).name, len(groups), adapters.NAMES[algo],
             PEFT_TYPES[algo])
    return len(groups)


def _lycoris_kept(path: Path, sd: dict[str, torch.Tensor], metadata: dict[str, str], adapter_config: dict | None,
                  dst: Path, to: str, dtype: torch.dtype | None, rank: int | None) -> tuple[LoRAFile, int] | None:
    """kohya LoHa/LoKr -> PEFT LoHa/LoKr, PEFT LoHa/LoKr -> kohya LoHa/LoKr, keeping the algorithm (no --rank);
    None when the conversion goes through a plain LoRA instead."""
    if rank is not None or to == "diffusers":
        return None
    from_peft = _is_peft_lycoris(sd)
    if to == "kohya" and from_peft:
        sd = _kohya_from_peft_lycoris(sd, metadata, adapter_config, path)
        meta = {k: v for k, v in metadata.items() if k not in (ADAPTER_META, "format") and not k.startswith("sshs_")}
        groups = adapters.group_modules(sd)
        meta.setdefault("ss_network_module", "lycoris.kohya")
        meta.setdefault("ss_network_args", json.dumps({"algo": adapters.algorithm_of(next(iter(groups.values())))}))
        save_lora(dst, sd, meta, dtype)
        count = len(groups)
    elif to == "peft" and not from_peft and any(k.endswith(LOHA_LOKR_KEYS) for k in sd):
        count = _write_peft_lycoris(sd, dst, metadata, dtype, path)
        if count is None:
            return None
    else:
        return None
    sdxl = family_of_lora({k.partition(".")[0] for k in sd}) == "sdxl"
    return LoRAFile([], dict(metadata), "peft" if from_peft else "kohya", sdxl, []), count


def _split_fused(entry: Entry) -> list[Entry]:
    """A fused q/k/v projection becomes three modules: up split by rows, down shared (exact, same rank/alpha)."""
    parts = lf.fused_parts(entry.path) if entry.path else None
    if parts is None:
        return [entry]
    f = entry.factors
    if f.up.shape[0] % 3:
        raise ToolkitError(f"{entry.source}: fused q/k/v module with {f.up.shape[0]} output rows (not 3 equal parts)")
    return [Entry(LoRAFactors(f.down.clone(), up.clone(), f.alpha), entry.component, p, f"{entry.source}[{p[-6:]}]")
            for p, up in zip(parts, f.up.chunk(3, dim=0))]


def _target_name(entry: Entry, to: str, sdxl: bool) -> str | None:
    if to == "kohya":
        if entry.path is not None:
            return lf.module_to_kohya(entry.component, entry.path, sdxl)
        return entry.source if re.match(r"lora_(unet|te[12]?)_", entry.source) else None
    return None if entry.path is None else f"{entry.component}.{entry.path}"


def _common(values: list) -> object:  # noqa: ANN401 - the common value, or "Dynamic"
    return values[0] if len(set(values)) == 1 else "Dynamic"


def kohya_metadata(lora: LoRAFile, modules: Mapping[str, LoRAFactors]) -> dict[str, str]:
    """Input metadata (minus what belongs to other formats) plus the minimum `ss_*` keys the file lacks."""
    meta = {k: v for k, v in lora.metadata.items() if k not in (ADAPTER_META, "format") and not k.startswith("sshs_")}
    ranks = [m.rank for m in modules.values()]
    alphas = [m.alpha for m in modules.values()]
    meta.setdefault("ss_network_module", "networks.lora")
    meta.setdefault("ss_network_dim", str(_common(ranks)))
    meta.setdefault("ss_network_alpha", str(_common(alphas)))
    family = family_from_metadata(meta) or ("sdxl" if lora.sdxl else None)
    if family and "ss_base_model_version" not in meta:
        meta["ss_v2"] = str(family == "sd2")
        meta["ss_base_model_version"] = base_model_version(family)
    return meta


def adapter_metadata(entries: list[tuple[str, str, LoRAFactors]]) -> dict[str, object]:
    """diffusers' packed `LoraConfig` per component: most common rank/alpha, patterns for the others."""
    out: dict[str, object] = {}
    for component in lf.COMPONENTS:
        mods = [(lf.pattern_path(c, p), f) for c, p, f in entries if c == component]
        if not mods:
            continue
        r = Counter(f.rank for _, f in mods).most_common(1)[0][0]
        alpha = Counter(f.alpha for _, f in mods).most_common(1)[0][0]
        config = {
            "r": r, "lora_alpha": alpha, "target_modules": sorted(p for p, _ in mods),
            "rank_pattern": {p: f.rank for p, f in mods if f.rank != r},
            "alpha_pattern": {p: f.alpha for p, f in mods if f.alpha != alpha},
            "lora_dropout": 0.0, "bias": "none", "use_dora": False, "use_rslora": False, "init_lora_weights": True,
        }
        out.update({f"{component}.{k}": v for k, v in config.items()})
    return out


def _is_sd2(lora: LoRAFile) -> bool:
    """An SD2 LoRA: said by the metadata, or 1024-wide text-encoder or cross-attention inputs (OpenCLIP ViT-H)."""
    family = family_from_metadata(lora.metadata)
    if family or lora.sdxl:
        return family == "sd2"
    return any(e.path and e.factors.down.shape[1] == 1024 and
               (e.component == lf.TE or e.path.endswith(("attn2.to_k", "attn2.to_v"))) for e in lora.entries)


def _diffusers_factors(entry: Entry, sd2: bool) -> LoRAFactors:
    """SD2's proj_in/proj_out are Linear in every Diffusers SD2 model; sd-scripts trains them as 1x1 convs
    (4-D factors) from single files, which diffusers cannot load onto a Linear: write those factors 2-D."""
    f = entry.factors
    if sd2 and f.is_conv and f.kernel_size == (1, 1) and entry.path.endswith((".proj_in", ".proj_out")):
        return LoRAFactors(f.down2d(), f.up2d(), f.alpha)
    return f


def _plan(lora: LoRAFile, to: str, src: str | os.PathLike) -> dict[str, Entry]:
    """Target name -> module; what the target cannot name is listed in one warning."""
    written: dict[str, Entry] = {}
    lost = []
    for entry in lora.entries:
        name = _target_name(entry, to, lora.sdxl)
        if name is None:
            lost.append(entry.source)
        elif name in written:
            raise ToolkitError(f"{src}: modules {written[name].source} and {entry.source} both become {name}")
        else:
            written[name] = entry
    if lost or lora.ignored:
        items = lost + lora.ignored
        log.warning("%s: %d module(s)/tensor(s) cannot be written as %s and are left out: %s", Path(src).name,
                    len(items), to, ", ".join(items))
    if not written:
        raise ToolkitError(f"{src}: none of its modules can be written as a {to} LoRA")
    return written


def convert_lora(src: str | os.PathLike, dst: str | os.PathLike, to: str, dtype: torch.dtype | None = None,
                 rank: int | None = None, base: BaseLookup | None = None) -> tuple[LoRAFile, int]:
    """Convert `src` (any format) to `dst` in format `to`; returns the input and the number of modules written.
    LyCORIS modules become plain LoRAs (exact, or at most `rank`; DoRA needs the `base` weights)."""
    if to not in lf.FORMATS:
        raise ToolkitError(f"--to {to}: use one of {', '.join(lf.FORMATS)}")
    dst = Path(dst)
    if to != "kohya" and dst.suffix.lower() != ".safetensors":
        raise ToolkitError(f"{dst}: a {to} LoRA keeps its alphas in the safetensors header: use a .safetensors name")
    if rank is not None and rank < 1:
        raise ToolkitError(f"--rank {rank}: must be at least 1")
    path = _existing(src)
    tensors = _read_tensors(path)  # read once: kept as LoHa/LoKr, or read as a LoRA
    kept = _lycoris_kept(path, *tensors, dst, to, dtype, rank)
    if kept is not None:
        return kept
    lora = _lora_file(path, *tensors, rank, base)
    written = _plan(lora, to, src)
    if to == "kohya":
        modules = {name: e.factors for name, e in written.items()}
        save_lora(dst, modules_to_state_dict(modules), kohya_metadata(lora, modules), dtype)
        return lora, len(modules)
    sd2 = _is_sd2(lora)
    sd, mods = {}, []
    for entry in written.values():
        factors = _diffusers_factors(entry, sd2)
        down_key, up_key = lf.file_keys(to, entry.component, entry.path)
        sd[down_key], sd[up_key] = factors.down, factors.up
        mods.append((entry.component, entry.path, factors))
    meta = {k: v for k, v in lora.metadata.items() if k != ADAPTER_META and not k.startswith("sshs_")}
    packed = adapter_metadata(mods)
    meta.update({"format": "pt", ADAPTER_META: json.dumps(packed, indent=2, sort_keys=True)})
    save_state_dict(sd, dst, meta, dtype=dtype)
    return lora, len(written)

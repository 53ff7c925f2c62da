"""Base-model-aware resize: decompose each LoRA once, score every direction against the base checkpoint,
and write one file per recipe.

Logging: INFO for progress; the `library.resize.details` logger carries the score quantiles and final
thresholds (INFO, `-v`) and one line per layer (DEBUG, `-vv`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from library.errors import ToolkitError
from library.files import check_output_dir, check_output_file
from library.keys import Target
from library.lora_io import LoRAFactors, modules_to_state_dict, save_lora
from library.resize.base import NORMS, BaseCheckpoint
from library.resize.decompose import Decomposed, decompose_all, is_zero, parallel_map, worker_count
from library.resize.inputs import LoRAInput, load_input, parse_specs
from library.resize.norms_cache import NormsCache
from library.resize.recipe import Recipe, format_number
from library.resize.report import Spectrum, draw_report
from library.resize.scoring import (
    LayerRefs,
    entry_bytes,
    offset_digits,
    quantile_line,
    score_layer,
    select,
    subspace_scales,
)

log = logging.getLogger(__name__)
details = logging.getLogger("library.resize.details")

# sd-scripts never trains SDXL te1's last layer (its output is not used), so those layers are zero by design
_EXPECTED_ZERO = "lora_te1_text_model_encoder_layers_11_"


@dataclass
class AwareSettings:
    """The base-model-aware command line."""

    checkpoint: Path
    loras: list[str]
    recipes: list[Recipe]
    output_folder: Path | None = None
    dtype: torch.dtype = torch.float16
    device: str | None = None
    report: Path | None = None
    cache_dir: Path | None = None
    use_cache: bool = True


@dataclass
class Prepared:
    """One input after decomposition: what is resized, what is kept as is, what is dropped."""

    lora: LoRAInput
    names: list[str] = field(default_factory=list)  # every module of the input, in order
    layers: list[Decomposed] = field(default_factory=list)
    refs: list[LayerRefs] = field(default_factory=list)
    unmapped: dict[str, LoRAFactors] = field(default_factory=dict)
    zero: list[str] = field(default_factory=list)


def _list(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


_REF_FIELD = {"fro": "fro_ckpt", "spn": "spn_ckpt"}


def _gather_refs(prep: Prepared, targets: list[Target], base: BaseCheckpoint, kinds: set[str],
                 need_subspace: bool, device: str | None) -> None:
    """Base norms (from the cache when there) and subspace scales per layer; weights are read in small
    batches and the math runs on all cores."""
    missing = []
    for ref, t in zip(prep.refs, targets):
        missing.append([k for k in sorted(kinds) if base.cached_norm(t, k) is None])
        for k in kinds:
            setattr(ref, _REF_FIELD[k], base.cached_norm(t, k))
    todo = [i for i in range(len(targets)) if need_subspace or missing[i]]
    batch = 4 * worker_count()
    bar = tqdm(total=len(todo), desc="base weights", unit="layer", leave=False, disable=not todo)
    for start in range(0, len(todo), batch):
        chunk = [(i, base.weight(targets[i])) for i in todo[start:start + batch]]

        def work(item: tuple[int, torch.Tensor]) -> tuple[dict[str, float], torch.Tensor | None]:
            i, w = item
            values = {k: NORMS[k](w) for k in missing[i]}
            return values, subspace_scales(prep.layers[i], w) if need_subspace else None

        for (i, _), (values, sub) in zip(chunk, parallel_map(work, chunk, device)):
            for k, v in values.items():
                base.store_norm(targets[i], k, v)
                setattr(prep.refs[i], _REF_FIELD[k], v)
            prep.refs[i].subspace = sub
        bar.update(len(chunk))
    bar.close()


def prepare(lora: LoRAInput, base: BaseCheckpoint, recipes: list[Recipe], device: str | None) -> Prepared:
    """Decompose every module and gather the base references the recipes (and -vv lines) need."""
    prep = Prepared(lora, list(lora.modules))
    kinds = set().union(*(r.checkpoint_norms for r in recipes))
    if details.isEnabledFor(logging.DEBUG):
        kinds.add("fro")  # rle_ckpt of the -vv lines
    need_subspace = any(r.needs_subspace for r in recipes)
    source = "+".join(str(m.path) for m in lora.members)
    targets = []
    items = list(lora.modules.items())
    for (name, module), layer in zip(items, decompose_all(items, device, source, desc=f"decompose {lora.name}")):
        if is_zero(layer):
            prep.zero.append(name)
            continue
        target = base.target(name)
        if target is None or not base.fits(target, layer):
            prep.unmapped[name] = module
            continue
        prep.layers.append(layer)
        prep.refs.append(LayerRefs())
        targets.append(target)
    for name in (*(layer.name for layer in prep.layers), *prep.zero):  # the decomposition replaces them
        del lora.modules[name]
    items.clear()
    if not prep.layers and prep.unmapped:
        raise ToolkitError(f"{source}: none of its {len(prep.unmapped)} modules matches a weight of {base.path} "
                           f"(a {base.family} checkpoint); is it the model this LoRA was trained on?")
    if kinds or need_subspace:
        _gather_refs(prep, targets, base, kinds, need_subspace, device)
    zero = [n for n in prep.zero if not n.startswith(_EXPECTED_ZERO)]
    if zero:
        log.warning("%s: %d LoRA layers are all zeroes and are left out: %s", lora.name, len(zero), _list(zero))
    if len(zero) < len(prep.zero):
        log.debug("%s: %d untrained te1 layer-11 modules left out", lora.name, len(prep.zero) - len(zero))
    if prep.unmapped:
        log.warning("%s: %d LoRA modules have no matching weight in %s and are kept unresized: %s", lora.name,
                    len(prep.unmapped), base.path.name, _list(sorted(prep.unmapped)))
    return prep


def _metadata(lora: LoRAInput, recipe: Recipe, threshold: float) -> dict[str, str]:
    meta = dict(lora.metadata)
    meta["resize_params"] = json.dumps(recipe.params(threshold))
    for key in ("ss_network_dim", "ss_network_alpha"):
        if key in meta:
            meta[key] = "Dynamic"
    return meta


def _fixed_bytes(prep: Prepared, recipe: Recipe, elem: int) -> int:
    """Bytes every output has whatever the threshold: header frame, metadata, kept-as-is tensors."""
    meta = _metadata(prep.lora, recipe, -12.345678901234567)
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = "0" * 64, "0" * 8
    total = 8 + len(json.dumps({"__metadata__": meta}, separators=(",", ":"))) + 8
    for k, v in {**modules_to_state_dict(prep.unmapped), **prep.lora.passthrough}.items():
        total += entry_bytes(k, tuple(v.shape), elem, offset_digits(recipe)) + v.numel() * (elem if v.is_floating_point() else v.element_size())
    return total


def build_state_dict(prep: Prepared, keep: list[torch.Tensor], rescale: float) -> dict[str, torch.Tensor]:
    """Resized layers (kept directions only; layers keeping none are absent), unmapped layers as they were."""
    modules = {layer.name: layer.balanced_factors(k, rescale) for layer, k in zip(prep.layers, keep) if k.any()}
    modules.update(prep.unmapped)
    sd = modules_to_state_dict(dict(sorted(modules.items())))
    for key, value in prep.lora.passthrough.items():
        owner = next((n for n in prep.names if key.startswith(n + ".")), None)
        if owner is None or owner in modules:
            sd[key] = value
    return sd


def _log_layers(prep: Prepared, keep: list[torch.Tensor], rescale: float) -> None:
    for layer, refs, k in zip(prep.layers, prep.refs, keep):
        sigma = layer.sigma.double() * rescale
        err = float(torch.linalg.vector_norm(sigma[~k]))
        rle_lora = err / float(torch.linalg.vector_norm(sigma))
        rle_ckpt = err / refs.fro_ckpt if refs.fro_ckpt else math.nan
        details.debug(f"dim:{sigma.shape[0]:>3}->{int(k.sum()):<3} rle_lora:{100 * rle_lora:>6.2f}% "
                      f"rle_ckpt:{100 * rle_ckpt:>6.2f}% {layer.name}")


def apply_recipe(prep: Prepared, recipe: Recipe, out_dir: Path, dtype: torch.dtype,
                 report: Path | None = None) -> Path | None:
    """Score, select, write `<name>_<recipe>_th<threshold>.safetensors` (and the PNG report if asked)."""
    elem = torch.finfo(dtype).bits // 8
    scores = [score_layer(layer, refs, recipe) for layer, refs in zip(prep.layers, prep.refs)]
    sel = select(prep.layers, scores, recipe, elem, _fixed_bytes(prep, recipe, elem))
    if details.isEnabledFor(logging.INFO):
        details.info("%s: %s", prep.lora.name, quantile_line(scores))
        kept = sum(int(k.sum()) for k in sel.keep)
        total = sum(int(s.shape[0]) for s in scores)
        if recipe.size_mib is not None:
            nxt = f"{sel.next_bytes / 2**20:.3f}M" if sel.next_bytes else "-"
            details.info("%s [%s]: Total rank: %d of %d. threshold %.2f: target:%.3fM <= real:%.3fM < next:%s",
                         prep.lora.name, recipe.text, kept, total, sel.threshold, recipe.size_mib,
                         sel.est_bytes / 2**20, nxt)
        else:
            details.info("%s [%s]: Total rank: %d of %d. threshold %.2f: size %.3fM", prep.lora.name, recipe.text,
                         kept, total, sel.threshold, sel.est_bytes / 2**20)
    if details.isEnabledFor(logging.DEBUG):
        _log_layers(prep, sel.keep, recipe.rescale)
    sd = build_state_dict(prep, sel.keep, recipe.rescale)
    path = out_dir / f"{prep.lora.name}_{recipe.tag()}_th{format_number(sel.threshold)}.safetensors"
    if not any(k.any() for k in sel.keep) and not prep.unmapped:
        log.warning("%s: recipe %r keeps no direction at all (threshold %.2f); %s not written: lower thr= or "
                    "raise size=", prep.lora.name, recipe.text, sel.threshold, path.name)
        return None
    save_lora(path, sd, _metadata(prep.lora, recipe, sel.threshold), dtype)
    log.info("saved %s (%.3f MiB)", path, os.path.getsize(path) / 2**20)
    if report is not None:
        spectra = [Spectrum(layer.name, s.float(), k) for layer, s, k in zip(prep.layers, scores, sel.keep)]
        draw_report(report, f"{path.name}", f"recipe {recipe.text}: threshold {sel.threshold:.3f}, "
                    f"{sum(int(k.sum()) for k in sel.keep)} of {sum(s.shape[0] for s in scores)} directions kept",
                    spectra, "score (log10)", sel.threshold)
        log.info("report %s", report)
    return path


def _report_path(report: Path | None, count: int, lora: LoRAInput, recipe: Recipe) -> Path | None:
    if report is None or count == 1:
        return report
    return report.with_name(f"{report.stem}_{lora.name}_{recipe.tag()}{report.suffix or '.png'}")


def run(settings: AwareSettings) -> list[Path]:
    """Resize every input with every recipe; returns the written files."""
    if not settings.recipes:
        raise ToolkitError("no recipe given (-r)")
    groups = parse_specs(settings.loras)
    for members in groups:  # every output folder is known now: check them before any decomposition
        check_output_dir(settings.output_folder or members[0].path.parent, "-o/--output_folder")
    if settings.report:
        check_output_file(settings.report, "--report", [("CHECKPOINT", settings.checkpoint)])
    cache = NormsCache(settings.checkpoint, settings.cache_dir, settings.use_cache)
    base = BaseCheckpoint(settings.checkpoint, cache, settings.device)
    log.info("base checkpoint %s (%s, %d LoRA-able weights)", base.path.name, base.family, len(base.targets))
    count = len(groups) * len(settings.recipes)
    written = []
    try:
        for members in groups:
            lora = load_input(members, base.full_weight, base.family == "sdxl")
            out_dir = Path(settings.output_folder) if settings.output_folder else lora.folder
            prep = prepare(lora, base, settings.recipes, settings.device)
            for recipe in settings.recipes:
                report = _report_path(settings.report, count, lora, recipe)
                path = apply_recipe(prep, recipe, out_dir, settings.dtype, report)
                if path is not None:
                    written.append(path)
    finally:
        cache.save()
    return written

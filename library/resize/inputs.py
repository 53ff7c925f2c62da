"""LoRA inputs of the base-model-aware resize: plain files, wildcards and weighted merges `a:0.7,b:0.3`.

A merge concatenates the inputs' ranks with per-input factors chosen so each input contributes exactly
w_i·(alpha_i/r_i)·up_i@down_i (spec lora-tools.md §9.8); the resize then decomposes the sum.
"""

from __future__ import annotations

import glob
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from library.adapters.equivalent import BaseLookup, lora_state_dict, needs_lora_form
from library.errors import ToolkitError
from library.lora_io import ALPHA, DOWN, UP, LoRAFactors, load_lora, split_modules


@dataclass
class Member:
    path: Path
    weight: float = 1.0


@dataclass
class LoRAInput:
    """One LoRA to resize (a file or a merge): its modules, metadata and tensors that are not modules."""

    name: str
    members: list[Member]
    modules: dict[str, LoRAFactors]
    metadata: dict[str, str]
    passthrough: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.members[0].path.parent


def _expand(pattern: str) -> list[Path]:
    if any(c in pattern for c in "*?["):
        found = sorted(glob.glob(pattern))
        if not found:
            raise ToolkitError(f"{pattern}: no file matches this pattern")
        return [Path(p) for p in found]
    return [Path(pattern)]


def _member(text: str, spec: str) -> tuple[str, float | None]:
    """`path[:weight]`; a trailing part that is not a number belongs to the path (e.g. `C:\\x`)."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            if re.fullmatch(r"[-+0-9.eE]+", tail.strip()):
                raise ToolkitError(f"LoRA spec {spec!r}: weight {tail!r} is not a number") from None
    return text, None


def parse_specs(specs: list[str]) -> list[list[Member]]:
    """Each spec becomes one or more inputs: a file, every match of a wildcard, or one merge of members."""
    inputs = []
    for spec in specs:
        items = [s.strip() for s in spec.split(",")]
        parsed = [_member(s, spec) for s in items if s]
        if not parsed:
            raise ToolkitError(f"LoRA spec {spec!r}: empty")
        merge = len(items) > 1 or parsed[0][1] is not None
        if not merge:
            inputs.extend([Member(p)] for p in _expand(parsed[0][0]))
            continue
        members = []
        for path, w in parsed:
            w = 1.0 if w is None else w
            if not (w > 0 and math.isfinite(w)):
                raise ToolkitError(f"LoRA spec {spec!r}: weight {w:g} of {path}: merge weights must be positive")
            members.extend(Member(p, w) for p in _expand(path))
        inputs.append(members)
    return inputs


def merge_name(members: list[Member]) -> str:
    """Output base name: the stem for one file; for merges the stems' first words joined by `+`."""
    if len(members) == 1 and members[0].weight == 1.0:
        return members[0].path.stem
    name = "+".join(re.split(r"[-_ ]", m.path.stem, maxsplit=1)[0] for m in members)
    if any(m.weight != 1.0 for m in members):
        name += "(" + "+".join(f"{m.weight:.2f}" for m in members) + ")"
    return name


def concat_modules(parts: list[tuple[dict[str, LoRAFactors], float]], names: list[str]) -> dict[str, LoRAFactors]:
    """Exact weighted sum of LoRAs as one LoRA of rank Σr_i per layer (factors scaled by sqrt(f_i))."""
    out: dict[str, LoRAFactors] = {}
    all_names = sorted({n for mods, _ in parts for n in mods})
    for n in all_names:
        have = [(mods[n], w, src) for (mods, w), src in zip(parts, names) if n in mods]
        first = have[0][0]
        for m, _, src in have[1:]:
            if m.up.shape[0] != first.up.shape[0] or m.down.shape[1:] != first.down.shape[1:]:
                raise ToolkitError(f"{src}: module {n} has shape {tuple(m.down.shape[1:])}->{m.up.shape[0]}, "
                                   f"{have[0][2]} has {tuple(first.down.shape[1:])}->{first.up.shape[0]}: cannot merge")
        total = sum(m.rank for m, _, _ in have)
        for m, _, src in have:
            if m.alpha <= 0:
                raise ToolkitError(f"{src}: module {n} has alpha {m.alpha:g}; merging needs positive alphas")
        log_alpha = math.log(total) + sum(m.rank / total * math.log(w * m.scale) for m, w, _ in have)
        alpha = math.exp(log_alpha)
        downs, ups = [], []
        for m, w, _ in have:
            g = math.sqrt(w * m.alpha * total / (alpha * m.rank))
            downs.append(m.down.float() * g)
            ups.append(m.up.float() * g)
        out[n] = LoRAFactors(torch.cat(downs, 0), torch.cat(ups, 1), alpha)
    return out


def _module_keys(names) -> set[str]:  # noqa: ANN001 - iterable of module names
    return {f"{n}.{s}" for n in names for s in (DOWN, UP, ALPHA)}


def load_input(members: list[Member], base: BaseLookup | None = None, sdxl: bool = False) -> LoRAInput:
    """Read the member files; more than one member (or a weight) makes an exact merge. LyCORIS modules (LoHa,
    LoKr, Tucker, full, DoRA with the `base` weights) become exact LoRAs first."""
    loaded = []
    for m in members:
        sd, meta = load_lora(m.path)
        if needs_lora_form(sd):
            sd, _ = lora_state_dict(sd, base, sdxl, str(m.path))
            meta = {**meta, "ss_network_module": "networks.lora"}
        loaded.append((split_modules(sd, m.path), sd, meta))
    mods, sd, meta = loaded[0]
    module_keys = _module_keys(mods)
    passthrough = {k: v for k, v in sd.items() if k not in module_keys}
    if len(members) > 1 or members[0].weight != 1.0:
        mods = concat_modules([(mo, m.weight) for (mo, _, _), m in zip(loaded, members)],
                              [str(m.path) for m in members])
    return LoRAInput(merge_name(members), members, mods, dict(meta), passthrough)

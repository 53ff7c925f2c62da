"""The sd-scripts form of resize_lora: one LoRA, a fixed rank or a dynamic rule per layer.

Rank choices and metadata follow sd-scripts' networks/resize_lora.py (spec lora-tools.md §6), including its
keep-one-more rule for the dynamic methods; the SVD itself goes through the QR core (exact, never the full
matrix). Ranks above what a layer can hold are clamped instead of crashing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from library.adapters.equivalent import lora_state_dict, needs_lora_form
from library.errors import ToolkitError
from library.finite import cast_for_save
from library.lora_io import LoRAFactors, save_lora
from library.options.choices import DYNAMIC_METHODS
from library.resize.decompose import Decomposed, decompose, parallel_map

log = logging.getLogger(__name__)

MIN_SV = 1e-6
# (down, up) part names sd-scripts recognises: its own, PEFT, ControlLoRA
PAIR_NAMES = (("lora_down", "lora_up"), ("lora_A", "lora_B"), ("down", "up"))
SAVE_SUFFIXES = (".ckpt", ".pt", ".pth", ".safetensors")


@dataclass(frozen=True)
class PairKeys:
    """Where one module's factors live in the state dict."""

    module: str
    down: str
    up: str
    alpha: str


def find_pairs(sd: Mapping[str, torch.Tensor]) -> tuple[list[PairKeys], list[str]]:
    """Modules in file order, matched on the last or second-to-last key part; also down keys without an up."""
    pairs, lonely = [], []
    for key in sd:
        parts = key.split(".")
        for down_part, up_part in PAIR_NAMES:
            if len(parts) >= 3 and parts[-2] == down_part:
                module, up = ".".join(parts[:-2]), ".".join([*parts[:-2], up_part, parts[-1]])
            elif len(parts) >= 2 and parts[-1] == down_part:
                module, up = ".".join(parts[:-1]), ".".join([*parts[:-1], up_part])
            else:
                continue
            if up in sd:
                pairs.append(PairKeys(module, key, up, module + ".alpha"))
            else:
                lonely.append(key)
            break
    return pairs, lonely


def criterion_rank(s: torch.Tensor, method: str, param: float, full_rank: int) -> int:
    """sd-scripts' dynamic rank before the cap: count c from the rule, clamp to [1, full-1], keep c+1.

    `s` may be shorter than `full_rank` (a LoRA has at most its rank of non-zero singular values); the
    missing values are zeros, which is what a full SVD of up@down finds up to rounding.
    """
    n = s.shape[0]
    if method == "sv_ratio":
        c = int((s > s[0] / param).sum())
    elif method in ("sv_fro", "sv_cumulative"):
        v = s.pow(2) if method == "sv_fro" else s
        target = param**2 if method == "sv_fro" else param
        cum = torch.cumsum(v, 0) / v.sum()
        idx = int(torch.searchsorted(cum, torch.tensor(target, dtype=cum.dtype)))
        if idx >= n:  # the padded zeros keep the last cumulative value, so they do not reach target either
            idx = full_rank
        c = idx + 1
    else:
        raise ToolkitError(f"unknown --dynamic_method {method!r}: use one of {', '.join(DYNAMIC_METHODS)}")
    c = max(1, min(c, full_rank - 1))
    return c + 1


def choose_rank(s: torch.Tensor, full_rank: int, max_rank: int, method: str | None = None,
                param: float | None = None) -> int:
    """Rank sd-scripts would give this layer, clamped to what the layer can hold (min(out, in·k·k))."""
    if s.numel() == 0 or float(s[0]) <= MIN_SV:
        return 1
    k = criterion_rank(s, method, param, full_rank) if method else max_rank
    return max(1, min(k, max_rank, full_rank))


@dataclass
class ModuleReport:
    """What `--verbose` prints for one module, and the spectrum the PNG report draws."""

    name: str
    old_rank: int
    new_rank: int
    alpha: float
    sum_retained: float
    fro_retained: float
    max_ratio: float
    s: torch.Tensor = field(repr=False)

    def line(self, dynamic: bool) -> str:
        text = (f"{self.name:75} | sum(S) retained: {self.sum_retained:.1%}, fro retained: {self.fro_retained:.1%},"
                f" max(S) ratio: {self.max_ratio:0.1f}")
        if dynamic:
            text += f", dynamic | dim: {self.new_rank}, alpha: {self.alpha}"
        return text


def _report(layer: Decomposed, k: int, alpha: float) -> ModuleReport:
    s = layer.s.double()
    total, fro = float(s.abs().sum()), float(s.pow(2).sum().sqrt())
    kept = s[:k]
    last = float(s[k - 1]) if k <= s.shape[0] else 0.0
    return ModuleReport(layer.name, layer.old_rank, k, alpha,
                        float(kept.abs().sum()) / total if total else math.nan,
                        float(kept.pow(2).sum().sqrt()) / fro if fro else math.nan,
                        float(s[0]) / last if last else math.inf, layer.s)


@dataclass
class KohyaSettings:
    """The sd-scripts command line: ranks, dynamic rule and where to compute."""

    new_rank: int = 4
    new_conv_rank: int | None = None
    dynamic_method: str | None = None
    dynamic_param: float | None = None
    device: str | None = None

    @property
    def conv_rank(self) -> int:
        return self.new_conv_rank if self.new_conv_rank is not None else self.new_rank

    def check(self) -> None:
        if self.new_rank < 1 or self.conv_rank < 1:
            raise ToolkitError("--new_rank and --new_conv_rank must be at least 1")
        if self.dynamic_method and self.dynamic_method not in DYNAMIC_METHODS:
            raise ToolkitError(f"--dynamic_method {self.dynamic_method!r}: use one of {', '.join(DYNAMIC_METHODS)}")
        if self.dynamic_method and self.dynamic_param is None:
            raise ToolkitError(f"--dynamic_method {self.dynamic_method} needs --dynamic_param")
        if self.dynamic_param is not None and not self.dynamic_method:
            raise ToolkitError(f"--dynamic_param {self.dynamic_param}: has no effect without --dynamic_method "
                               f"({', '.join(DYNAMIC_METHODS)}); give one, or leave --dynamic_param out")
        if self.dynamic_method:
            self._check_param()

    def _check_param(self) -> None:
        """sv_ratio keeps singular values within a factor of the largest (so >= 1); sv_fro and sv_cumulative keep
        a fraction of the norm or sum (so in (0, 1]). Anything else, NaN included, cannot mean a rank."""
        p, method = self.dynamic_param, self.dynamic_method
        if method == "sv_ratio" and not 1 <= p < float("inf"):
            raise ToolkitError(f"--dynamic_param {p}: sv_ratio keeps singular values above the largest divided by "
                               "this ratio, so it must be a finite number of at least 1 (e.g. 8)")
        if method != "sv_ratio" and not 0 < p <= 1:
            raise ToolkitError(f"--dynamic_param {p}: {method} keeps this fraction of the "
                               f"{'Frobenius norm' if method == 'sv_fro' else 'sum of singular values'}, so it must "
                               "be in (0, 1] (e.g. 0.9)")


@dataclass
class KohyaResult:
    state_dict: dict[str, torch.Tensor]
    reports: list[ModuleReport]
    old_max_rank: int
    last_alpha: float | None


def resize_state_dict(sd: Mapping[str, torch.Tensor], settings: KohyaSettings, source: str = "<memory>",
                      out_dtype: torch.dtype | None = None, output: str = "<memory>") -> KohyaResult:
    """Resize every module of `sd`; other tensors pass through unchanged. Each module's decomposition is
    dropped as soon as its new factors (cast to `out_dtype`, range-checked for `output`) exist, so memory stays
    near input + output."""
    settings.check()
    pairs, lonely = find_pairs(sd)
    if not pairs:
        raise ToolkitError(f"{source}: no LoRA modules found (expected lora_down/lora_up, lora_A/lora_B or down/up keys)")
    if lonely:
        log.warning("%d down weights without a matching up weight were copied unchanged, e.g. %s", len(lonely), lonely[0])
    for p in pairs:
        if sd[p.up].shape[1] != sd[p.down].shape[0]:
            raise ToolkitError(f"{source}: module {p.module}: up has {sd[p.up].shape[1]} columns, "
                               f"down {sd[p.down].shape[0]} rows")

    def work(p: PairKeys) -> tuple[LoRAFactors, ModuleReport]:
        down, up = sd[p.down], sd[p.up]
        alpha = float(sd[p.alpha]) if p.alpha in sd else float(down.shape[0])
        layer = decompose(p.module, LoRAFactors(down, up, alpha or float(down.shape[0])), settings.device, source)
        cap = settings.conv_rank if down.ndim == 4 else settings.new_rank
        k = choose_rank(layer.s, layer.full_rank, cap, settings.dynamic_method, settings.dynamic_param)
        f = layer.kohya_factors(k)
        if out_dtype is not None:
            f = LoRAFactors(cast_for_save(f.down, out_dtype, output, p.down), cast_for_save(f.up, out_dtype, output, p.up),
                            f.alpha)
        return f, _report(layer, k, f.alpha)

    out = dict(sd)
    reports = []
    for p, (f, report) in zip(pairs, parallel_map(work, pairs, settings.device, desc="resize", unit="module")):
        out[p.down], out[p.up] = f.down, f.up
        out[p.alpha] = torch.tensor(f.alpha)
        reports.append(report)
    last_alpha = reports[-1].alpha if reports else None
    old_max = max(r.old_rank for r in reports)
    if not settings.dynamic_method and min(settings.new_rank, settings.conv_rank) > old_max:
        log.warning("--new_rank %d is above the input's largest rank (%d): no module gains rank; the output keeps "
                    "the input's ranks", min(settings.new_rank, settings.conv_rank), old_max)
    return KohyaResult(out, reports, old_max, last_alpha)


def kohya_metadata(meta: Mapping[str, str], settings: KohyaSettings, old_dim: int, last_alpha: float | None) -> dict:
    """Input metadata with sd-scripts' updates: training comment, network dim and alpha."""
    meta = dict(meta)
    comment = meta.get("ss_training_comment", "")
    if settings.dynamic_method:
        meta["ss_training_comment"] = (f"Dynamic resize with {settings.dynamic_method}: {settings.dynamic_param} "
                                       f"from {old_dim}; {comment}")
        meta["ss_network_dim"] = meta["ss_network_alpha"] = "Dynamic"
    else:
        conv = "" if settings.conv_rank == settings.new_rank else f" (conv: {settings.conv_rank})"
        meta["ss_training_comment"] = f"dimension is resized from {old_dim} to {settings.new_rank}{conv}; {comment}"
        meta["ss_network_dim"] = str(settings.new_rank)
        meta["ss_network_alpha"] = str(last_alpha)
    return meta


def _as_lora(sd: Mapping[str, torch.Tensor], meta: dict[str, str], model: str | Path,
             sd_model: str | Path | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """LyCORIS modules as exact LoRAs; the output is then a LoRA/LoCon file (networks.lora)."""
    from library.keys import family_of_lora
    from library.merge import BaseWeights

    base = BaseWeights(sd_model) if sd_model else None
    sdxl = family_of_lora({k.partition(".")[0] for k in sd}) == "sdxl"
    sd, report = lora_state_dict(sd, base.get if base else None, sdxl, str(model), compress=False)
    log.info("%s: %d LyCORIS module(s) read as exact LoRAs before the resize", model, len(report.modules))
    meta["ss_network_module"] = "networks.lora"
    meta.pop("ss_network_args", None)
    return sd, meta


def verbose_summary(reports: list[ModuleReport], dynamic: bool) -> list[str]:
    """The `--verbose` lines: one per module, then the mean and spread of the Frobenius retention."""
    lines = [r.line(dynamic) for r in reports]
    fro = torch.tensor([r.fro_retained for r in reports if not math.isnan(r.fro_retained)], dtype=torch.float64)
    if fro.numel():
        lines.append(f"Average Frobenius norm retention: {float(fro.mean()):.2%} | std: {float(fro.std(unbiased=False)):0.3f}")
    return lines


def resize_file(model: str | Path, save_to: str | Path, settings: KohyaSettings,
                save_dtype: torch.dtype | None = None, sd_model: str | Path | None = None) -> KohyaResult:
    """Read `model`, resize, write `save_to` (metadata updated, hashes after the final cast, atomic).

    LoHa/LoKr/Tucker/full/DoRA modules are first turned into exact LoRAs (`library.adapters`); DoRA needs the base
    checkpoint `sd_model`."""
    from library.files import load_state_dict

    save_to = Path(save_to)
    settings.check()
    if save_to.suffix.lower() not in SAVE_SUFFIXES:
        raise ToolkitError(f"--save_to {save_to}: must end with {', '.join(SAVE_SUFFIXES)}")
    sd, meta = load_state_dict(model)
    if needs_lora_form(sd):
        sd, meta = _as_lora(sd, dict(meta), model, sd_model)
    log.info("resizing %s", model)
    save_dtype = save_dtype or torch.float32  # the math is float32 whatever the input, as in sd-scripts
    result = resize_state_dict(sd, settings, str(model), save_dtype, str(save_to))
    meta = kohya_metadata(meta, settings, result.old_max_rank, result.last_alpha)
    save_lora(save_to, result.state_dict, meta, save_dtype)
    log.info("saved %s", save_to)
    return result

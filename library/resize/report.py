"""`--report FILE.png`: every layer's singular-value spectrum with the kept directions and the cut marked.

One small panel per layer, all on one vertical scale, so a glance shows which layers a recipe trims hard
and which it keeps whole. Drawn with Pillow (no plotting library needed).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from library.files import atomic_path

KEPT, DROPPED, CUT, THRESH, GRID, FRAME = "#3b6fc4", "#c8c8c8", "#d62728", "#ff9f1c", "#eeeeee", "#888888"
PANEL_W, PANEL_H, LABEL_H, PAD = 176, 92, 14, 8
_SHORT = [("lora_unet_", ""), ("lora_", ""), ("text_model_encoder_layers_", "L"), ("transformer_blocks_", "tb"),
          ("down_blocks_", "down"), ("up_blocks_", "up"), ("attentions_", "att"), ("resnets_", "res"),
          ("input_blocks_", "in"), ("output_blocks_", "out"), ("middle_block_", "mid"), ("mid_block_", "mid"),
          ("self_attn_", ""), ("_proj", "")]


@dataclass
class Spectrum:
    """One panel: per-direction values (log10 units, descending σ order) and which directions are kept."""

    name: str
    values: torch.Tensor
    keep: torch.Tensor


def short_name(name: str) -> str:
    for a, b in _SHORT:
        name = name.replace(a, b)
    return re.sub(r"_+", "_", name).strip("_")


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """Cut the text (ending in '..') so it fits the panel width."""
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".."


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _range(spectra: list[Spectrum], threshold: float | None) -> tuple[float, float]:
    finite = [float(v) for s in spectra for v in s.values if math.isfinite(float(v))]
    if threshold is not None and math.isfinite(threshold):
        finite.append(threshold)
    if not finite:
        return -1.0, 1.0
    lo, hi = min(finite), max(finite)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def _panel(draw: ImageDraw.ImageDraw, x0: int, y0: int, sp: Spectrum, lo: float, hi: float,
           threshold: float | None, font: ImageFont.ImageFont) -> None:
    n = sp.values.shape[0]
    k = int(sp.keep.sum())
    draw.text((x0, y0), _fit(draw, f"{n}->{k} {short_name(sp.name)}", font, PANEL_W - PAD), fill="black", font=font)
    top, bottom, left, right = y0 + LABEL_H, y0 + PANEL_H - 4, x0, x0 + PANEL_W - PAD

    def y_of(v: float) -> float:
        v = min(max(v, lo), hi)
        return bottom - (v - lo) / (hi - lo) * (bottom - top)

    for g in range(math.ceil(lo), math.floor(hi) + 1):  # a light line per decade
        draw.line([(left, y_of(g)), (right, y_of(g))], fill=GRID)
    bw = (right - left) / max(n, 1)
    for i in range(n):
        v = float(sp.values[i])
        if not math.isfinite(v) and v < 0:
            continue
        xa, xb = left + i * bw, left + (i + 1) * bw - (1 if bw >= 3 else 0)
        draw.rectangle([xa, y_of(v), max(xa, xb), bottom], fill=KEPT if bool(sp.keep[i]) else DROPPED)
    if threshold is not None and math.isfinite(threshold):
        ty = y_of(threshold)
        for xa in range(left, right, 6):
            draw.line([(xa, ty), (min(xa + 3, right), ty)], fill=THRESH)
    prefix = bool(sp.keep[:k].all()) if k else True
    if prefix and 0 < k < n:  # the cut between the last kept and the first dropped direction
        xc = left + k * bw
        draw.line([(xc, top - 2), (xc, bottom)], fill=CUT, width=2)
    draw.rectangle([left, top, right, bottom], outline=FRAME)


def draw_report(path: str | Path, title: str, subtitle: str, spectra: list[Spectrum], ylabel: str,
                threshold: float | None = None) -> Path:
    """Write the PNG (atomically) and return its path."""
    path = Path(path)
    cols = max(1, min(12, math.ceil(math.sqrt(max(len(spectra), 1) * 1.5))))
    rows = max(1, math.ceil(len(spectra) / cols))
    header = 78
    img = Image.new("RGB", (cols * PANEL_W + 2 * PAD, header + rows * PANEL_H + PAD), "white")
    draw = ImageDraw.Draw(img)
    big, small = _font(16), _font(11)
    lo, hi = _range(spectra, threshold)
    draw.text((PAD, 6), title, fill="black", font=big)
    draw.text((PAD, 28), subtitle, fill="black", font=small)
    legend = f"y: {ylabel}, {lo:.2f} to {hi:.2f} (grey lines: every 1.0)"
    draw.text((PAD, 44), legend, fill="black", font=small)
    x = PAD
    legend_items = [(KEPT, "kept"), (DROPPED, "discarded"), (CUT, "cut")]
    if threshold is not None and math.isfinite(threshold):
        legend_items.append((THRESH, "threshold"))
    for colour, label in legend_items:
        draw.rectangle([x, 62, x + 10, 72], fill=colour)
        draw.text((x + 14, 60), label, fill="black", font=small)
        x += 24 + int(draw.textlength(label, font=small))
    for i, sp in enumerate(spectra):
        r, c = divmod(i, cols)
        _panel(draw, PAD + c * PANEL_W, header + r * PANEL_H, sp, lo, hi, threshold, small)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", optimize=True)
    return path

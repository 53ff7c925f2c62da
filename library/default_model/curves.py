"""Loss curves as CSV and a small PNG plot (Pillow only; no plotting library needed)."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def write_csv(rows: list[tuple[str, int, float]], path: Path) -> None:
    """`phase,step,loss` rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("phase,step,loss\n" + "".join(f"{p},{s},{v:.6g}\n" for p, s, v in rows), encoding="utf-8")


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


def write_png(rows: list[tuple[str, int, float]], path: Path, width: int = 640, height: int = 240) -> None:
    """One panel per phase, log-scale loss against step, smoothed over 2% of the steps."""
    phases = list(dict.fromkeys(p for p, _, _ in rows))
    if not phases:
        return
    img = Image.new("RGB", (width, height * len(phases)), "white")
    draw = ImageDraw.Draw(img)
    for i, phase in enumerate(phases):
        values = [max(v, 1e-8) for p, _, v in rows if p == phase]
        ys = [math.log10(v) for v in _smooth(values, max(1, len(values) // 50))]
        lo, hi = min(ys), max(ys)
        top, left, w, h = i * height + 24, 50, width - 70, height - 50
        draw.rectangle([left, top, left + w, top + h], outline=(160, 160, 160))
        pts = [(left + w * j / max(1, len(ys) - 1), top + h * (hi - y) / max(hi - lo, 1e-9)) for j, y in enumerate(ys)]
        if len(pts) > 1:
            draw.line(pts, fill=COLOURS[i % len(COLOURS)], width=2)
        draw.text((left, top - 18), f"{phase}: {len(values)} steps, loss {10 ** hi:.4g} -> {10 ** ys[-1]:.4g} "
                  "(log scale, smoothed)", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)

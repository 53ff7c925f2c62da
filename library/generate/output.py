"""Output file names and PNG text metadata of generated images.

The text chunks carry sd-scripts' keys (`prompt`, `negative-prompt`, `seed`, `sampler`, `steps`, `scale`)
plus one `parameters` chunk in the form A1111 and most image browsers read, so a picture tells how it was
made wherever it is opened.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from library.files import atomic_path
from library.generate.plan import ImageJob


def png_info(job: ImageJob, extra: Mapping[str, str] | None = None) -> PngInfo:
    """sd-scripts' text keys, `width`/`height`/`strength`, any `extra` keys, and an A1111 `parameters` text."""
    info = PngInfo()
    fields = {"prompt": job.prompt, "negative-prompt": job.negative_prompt, "seed": str(job.seed),
              "sampler": job.sampler, "steps": str(job.steps), "scale": str(job.scale),
              "width": str(job.width), "height": str(job.height)}
    if job.strength is not None:
        fields["strength"] = str(job.strength)
    if job.network_muls is not None:
        fields["network-muls"] = ",".join(f"{m:g}" for m in job.network_muls)
    fields.update(extra or {})
    for key, value in fields.items():
        info.add_text(key, value)
    info.add_text("parameters", a1111_parameters(job, extra))
    return info


def a1111_parameters(job: ImageJob, extra: Mapping[str, str] | None = None) -> str:
    """`prompt\\nNegative prompt: ...\\nSteps: 20, Sampler: ..., CFG scale: 7.5, Seed: 1, Size: WxH, ...`."""
    items = [f"Steps: {job.steps}", f"Sampler: {job.sampler}", f"CFG scale: {job.scale:g}", f"Seed: {job.seed}",
             f"Size: {job.width}x{job.height}"]
    extra = extra or {}
    if "model" in extra:
        items.append(f"Model: {extra['model']}")
    if job.strength is not None:
        items.append(f"Denoising strength: {job.strength:g}")
    if "clip-skip" in extra:
        items.append(f"Clip skip: {extra['clip-skip']}")
    lines = [job.prompt]
    if job.negative_prompt:
        lines.append(f"Negative prompt: {job.negative_prompt}")
    lines.append(", ".join(items))
    return "\n".join(lines)


def output_name(job: ImageJob, sequential: bool = False, use_original: bool = False,
                timestamp: str | None = None) -> str:
    """`im_<YYYYmmddHHMMSS>_<index>_<seed>.png`, `im_<000001>.png` when sequential, or the img2img source's stem."""
    if use_original and job.init_name:
        return f"{Path(job.init_name).stem}.png"
    if sequential:
        return f"im_{job.index + 1:06d}.png"
    ts = timestamp or time.strftime("%Y%m%d%H%M%S", time.localtime())
    return f"im_{ts}_{job.index:03d}_{job.seed}.png"


def save_png(image: Image.Image, path: Path, info: PngInfo) -> None:
    """Write atomically: a crash never leaves a truncated PNG under the final name."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)

"""Side-by-side grids of generated images: rows are prompts, columns are seeds, one block per model variant
(for example the base model and the same model with a LoRA). Used for README pictures and quick comparisons."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw

from library.generate.runner import GenerationConfig, generate


@dataclass(frozen=True)
class Variant:
    """One block of columns: a label and the networks applied (none: the base model)."""

    label: str
    network_module: tuple[str, ...] = ()
    network_weights: tuple[str, ...] = ()
    network_mul: tuple[float, ...] = ()


def generate_images(base: GenerationConfig, variant: Variant, prompts: Sequence[str], seeds: Sequence[int],
                    size: int = 64) -> list[list[Image.Image]]:
    """Images [prompt][seed] for one variant, via the same code as gen_img_diffusers.py."""
    with tempfile.TemporaryDirectory() as tmp:
        lines = [f"{p} --w {size} --h {size} --d {s}" for p in prompts for s in seeds]
        prompt_file = Path(tmp) / "prompts.txt"
        prompt_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        config = replace(base, from_file=str(prompt_file), prompt=None, outdir=str(Path(tmp) / "out"),
                         sequential_file_name=True, network_module=list(variant.network_module),
                         network_weights=list(variant.network_weights), network_mul=list(variant.network_mul))
        paths = sorted(generate(config))
        images = [Image.open(p).convert("RGB") for p in paths]
    return [images[i * len(seeds):(i + 1) * len(seeds)] for i in range(len(prompts))]


def compose(blocks: dict[str, list[list[Image.Image]]], prompts: Sequence[str], zoom: int = 3) -> Image.Image:
    """One picture: a label column, then for each block its images per seed, blocks separated by a gap."""
    first = next(iter(blocks.values()))[0][0]
    cell = first.width * zoom
    label_w, head, gap, pad = 230, 22, 12, 4
    n_seeds = len(next(iter(blocks.values()))[0])
    block_w = n_seeds * (cell + pad)
    width = label_w + len(blocks) * (block_w + gap)
    height = head + len(prompts) * (cell + pad)
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    for b, (label, rows) in enumerate(blocks.items()):
        x0 = label_w + b * (block_w + gap)
        draw.text((x0, 5), label, fill="black")
        for r, row in enumerate(rows):
            for c, img in enumerate(row):
                grid.paste(img.resize((cell, cell), Image.Resampling.NEAREST),
                           (x0 + c * (cell + pad), head + r * (cell + pad)))
    for r, prompt in enumerate(prompts):
        draw.text((6, head + r * (cell + pad) + cell // 2 - 6), prompt, fill="black")
    return grid

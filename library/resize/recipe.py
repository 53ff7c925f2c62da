"""Resize recipes: `fro_ckpt=1,thr=-3.5` — which scores rank the singular directions and how many to keep.

A recipe is a comma list of `key[=value]` items: score weights (normalised to sum 1), one selector (`thr=`
log10 threshold or `size=` MiB target) and an optional `rescale=` factor. Several recipes are separated
by `:` and all reuse one decomposition of the LoRA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from library.errors import ToolkitError

SCORE_KEYS = ("spn_ckpt", "spn_lora", "fro_ckpt", "fro_lora", "subspace", "params")
SELECTORS = ("thr", "size")
DEFAULT_RECIPES = "fro_ckpt=1,thr=-3.5"


@dataclass(frozen=True)
class Recipe:
    """One parsed recipe; `weights` holds every score key with its normalised weight (0 when unused)."""

    text: str
    weights: dict[str, float] = field(default_factory=dict)
    threshold: float | None = None
    size_mib: float | None = None
    rescale: float = 1.0

    @property
    def checkpoint_norms(self) -> set[str]:
        """Which base-weight norms the scores use: "fro" (fro_ckpt) and/or "spn" (spn_ckpt)."""
        return {kind for kind, key in (("fro", "fro_ckpt"), ("spn", "spn_ckpt")) if abs(self.weights[key]) > 1e-6}

    @property
    def needs_subspace(self) -> bool:
        return abs(self.weights["subspace"]) > 1e-6

    def tag(self) -> str:
        """File-name part: sorted non-zero weights as `frockpt1`, then `scale<x>` and `size<x>`."""
        parts = [f"{k.replace('_', '')}{format_number(w)}" for k, w in sorted(self.weights.items()) if w != 0.0]
        if self.rescale != 1.0:
            parts.append(f"scale{format_number(self.rescale)}")
        if self.size_mib is not None:
            parts.append(f"size{format_number(self.size_mib)}")
        return "_".join(parts)

    def params(self, threshold: float) -> dict:
        """What is stored as `resize_params` in the output's metadata."""
        return {"recipe_str": self.text, "weights": self.weights, "target_size": self.size_mib,
                "threshold": threshold, "rescale": self.rescale}


def format_number(v: float) -> str:
    """Two decimals with trailing zeros and dot removed: -2.871 -> -2.87, 1.0 -> 1, -inf -> -inf."""
    return f"{v:.2f}".rstrip("0").rstrip(".") if math.isfinite(v) else f"{v}"


def _number(recipe: str, item: str, value: str, allow_inf: bool = False) -> float:
    try:
        x = float(value)
    except ValueError:
        raise ToolkitError(f"recipe {recipe!r}: {item!r}: {value!r} is not a number") from None
    if math.isnan(x) or (math.isinf(x) and not allow_inf):
        raise ToolkitError(f"recipe {recipe!r}: {item!r}: the value must be a finite number")
    return x


def parse_recipe(text: str) -> Recipe:
    """Parse one recipe; any bad item ends with a ToolkitError that quotes the item."""
    weights = dict.fromkeys(SCORE_KEYS, 0.0)
    seen: dict[str, str] = {}
    selector: tuple[str, float] | None = None
    rescale = 1.0
    if not text.strip():
        raise ToolkitError("empty recipe: give e.g. 'fro_ckpt=1,thr=-3.5' (recipes are separated by ':')")
    for item in text.split(","):
        item = item.strip()
        key, eq, value = (s.strip() for s in item.partition("="))
        if not key:
            raise ToolkitError(f"recipe {text!r}: empty item {item!r}")
        if key in seen:
            raise ToolkitError(f"recipe {text!r}: {item!r} repeats {seen[key]!r}")
        seen[key] = item
        if key in SCORE_KEYS:
            weights[key] = _number(text, item, value) if eq else 1.0
        elif key in SELECTORS or key == "rescale":
            if not value:
                raise ToolkitError(f"recipe {text!r}: {item!r} needs a value ({key}=<number>)")
            x = _number(text, item, value, allow_inf=key == "thr")
            if key == "rescale":
                if x <= 0:
                    raise ToolkitError(f"recipe {text!r}: {item!r}: rescale must be > 0")
                rescale = x
            elif selector is not None:
                raise ToolkitError(f"recipe {text!r}: two selectors {seen[selector[0]]!r} and {item!r}: "
                                   "give either thr= or size=")
            elif key == "size" and x <= 0:
                raise ToolkitError(f"recipe {text!r}: {item!r}: size must be > 0 MiB")
            else:
                selector = (key, x)
        else:
            raise ToolkitError(f"recipe {text!r}: unknown key {key!r} in {item!r} "
                               f"(scores: {', '.join(SCORE_KEYS)}; selectors: thr=, size=; rescale=)")
    total = sum(weights.values())
    if abs(total) < 1e-12:
        raise ToolkitError(f"recipe {text!r}: the score weights sum to 0; give at least one of {', '.join(SCORE_KEYS)}")
    if selector is None:
        raise ToolkitError(f"recipe {text!r}: no selector; add thr=<log10 threshold> or size=<MiB>")
    weights = {k: v / total for k, v in weights.items()}
    threshold = selector[1] if selector[0] == "thr" else None
    size = selector[1] if selector[0] == "size" else None
    return Recipe(text, weights, threshold, size, rescale)


def parse_recipes(text: str) -> list[Recipe]:
    """Several recipes separated by `:`."""
    return [parse_recipe(part) for part in text.split(":")]

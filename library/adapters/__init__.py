"""The one owner of adapter math: LoRA/LoCon (incl. Tucker), LoHa, LoKr, full diffs, norms and DoRA on top.

`factors` holds the differentiable factor-level formulas (training modules use them); `modules` works on a
file's `{suffix: tensor}` groups (every tool uses it). Key names, shapes and scale rules: docs/lycoris.md.
"""

from library.adapters.factors import (
    dora_magnitude,
    kron_conv2d,
    kron_linear,
    loha_delta,
    lokr_delta,
    lokr_factorization,
    lokr_factors,
    lora_delta,
    tucker_rebuild,
    weight_decompose,
)
from library.adapters.modules import (
    ALGORITHMS,
    FULL,
    LOHA,
    LOKR,
    LORA,
    MODULE_SUFFIXES,
    NAMES,
    NORM,
    algorithm_of,
    alpha_of,
    apply_delta,
    bias_delta,
    delta_weight,
    dora_out_axis,
    dora_weight,
    group_modules,
    is_dora,
    natural_shape,
    rank_of,
    raw_delta,
    scale_of,
)

__all__ = [
    "ALGORITHMS", "FULL", "LOHA", "LOKR", "LORA", "MODULE_SUFFIXES", "NAMES", "NORM", "algorithm_of", "alpha_of", "apply_delta",
    "bias_delta", "delta_weight", "dora_magnitude", "dora_out_axis", "dora_weight", "group_modules", "is_dora",
    "kron_conv2d", "kron_linear", "lokr_delta", "lokr_factors", "lokr_factorization", "loha_delta", "lora_delta", "natural_shape", "rank_of", "raw_delta",
    "scale_of", "tucker_rebuild", "weight_decompose",
]

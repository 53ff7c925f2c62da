"""LoRA rank reduction: the sd-scripts rules (`kohya`) and base-model-aware recipes (`aware`).

Modules: `recipe` (recipe strings), `decompose` (QR-core SVD per layer), `kohya` (fixed and dynamic ranks),
`base` + `norms_cache` (base checkpoint weights and their cached norms), `scoring` (scores, thresholds,
size targets), `inputs` (files, wildcards, weighted merges), `report` (spectrum PNG), `aware` (the pipeline).
"""

"""Extract a LoRA from two checkpoints: the best low-rank approximation of tuned − original, per module.

Both files are read lazily, one weight pair at a time; each difference is decomposed with the randomized SVD
of `library.lowrank` (within 1% of an exact SVD's error, far cheaper on large layers).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from tqdm import tqdm

from library.errors import ToolkitError
from library.files import open_streaming, read_ahead
from library.keys import Target, checkpoint_targets
from library.lora_io import LoRAFactors
from library.lowrank import check_clamp_quantile, lowrank_of_matrix, quantile_abs_clamp, split_factors
from library.merge import FAMILY_NAMES, resolve_family, tensor_shapes
from library.metadata import minimum_metadata, modelspec

log = logging.getLogger(__name__)


def iter_deltas(org: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor], targets: Mapping[str, Target],
                load_dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, W_tuned − W_org in float32) per target, reading both files ahead in background threads.

    Each weight is read once even when several targets share it (OpenCLIP's packed q/k/v rows).
    """
    by_key: dict[str, list[tuple[str, Target]]] = {}
    for name, t in targets.items():
        by_key.setdefault(t.key, []).append((name, t))

    def cast(t: torch.Tensor) -> torch.Tensor:
        return (t.to(load_dtype) if load_dtype is not None else t).float()

    for (key, w_org), (_, w_tuned) in zip(read_ahead(org, by_key), read_ahead(tuned, by_key)):
        delta = cast(w_tuned) - cast(w_org)
        for name, t in by_key[key]:
            yield name, (delta[t.rows[0]:t.rows[1]] if t.rows else delta)


def select_targets(shapes: Mapping[str, tuple[int, ...]], family: str, conv_dim: int | None) -> dict[str, Target]:
    """The modules training would create: LierLa always; with conv_dim, the C3Lier extras too."""
    targets = checkpoint_targets(dict(shapes), family)
    return {n: t for n, t in targets.items() if t.group == "lierla" or (conv_dim and t.group == "c3lier")}


def _check_pair(org: dict, tuned: dict, targets: Mapping[str, Target], org_path: Path, tuned_path: Path) -> None:
    for t in targets.values():
        if t.key not in tuned:
            raise ToolkitError(f"{tuned_path}: has no {t.key}; both models must be the same architecture")
        if tuned[t.key] != org[t.key]:
            raise ToolkitError(f"{t.key} is {org[t.key]} in {org_path} but {tuned[t.key]} in {tuned_path}; "
                               "both models must be the same architecture")


def part_differs(org: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor], targets: Mapping[str, Target],
                 load_dtype: torch.dtype | None, min_diff: float, text_encoder: bool) -> bool:
    """True as soon as one weight of the part (text encoders, or U-Net) changes by more than `min_diff`
    (sd-scripts' rule for the text encoders; the U-Net counts any change). Stops reading at the first one."""
    part = {n: t for n, t in targets.items() if n.startswith("lora_te") == text_encoder}
    return any((float(d.abs().max()) if d.numel() else 0.0) > min_diff
               for _, d in iter_deltas(org, tuned, part, load_dtype))


def decompose(delta: torch.Tensor, rank: int, device: torch.device, clamp_quantile: float | None,
              generator: torch.Generator) -> LoRAFactors:
    """LoRA factors (up = U·S, down = Vh, alpha = rank) of one weight difference, shaped like the weight."""
    n_out = delta.shape[0]
    m = delta.reshape(n_out, -1).to(device)
    rank = min(rank, n_out, delta.shape[1])  # capped by the channels, as sd-scripts does
    up, down = split_factors(*lowrank_of_matrix(m, rank, generator), rank)
    if clamp_quantile is not None and clamp_quantile < 1:
        up, down = quantile_abs_clamp(up, down, clamp_quantile)
    up, down = up.cpu().contiguous(), down.cpu().contiguous()
    if delta.ndim == 4:
        up, down = up.reshape(n_out, rank, 1, 1), down.reshape(rank, *delta.shape[1:])
    return LoRAFactors(down, up, float(rank))


def extract_lora(model_org: str | os.PathLike, model_tuned: str | os.PathLike, dim: int = 4,
                 conv_dim: int | None = None, family: str | None = None, device: str | None = None,
                 load_dtype: torch.dtype | None = None, clamp_quantile: float | None = None,
                 min_diff: float = 0.01, seed: int = 0) -> tuple[dict[str, LoRAFactors], str]:
    """LoRA modules of tuned − original (rank `dim`, kxk convs `conv_dim`) and the family of the models.

    `clamp_quantile` None (the default) keeps the exact truncated SVD; 0.99 reproduces sd-scripts' clamp.
    """
    check_clamp_quantile(clamp_quantile)
    if dim < 1 or (conv_dim is not None and conv_dim < 1):
        raise ToolkitError("--dim and --conv_dim must be at least 1")
    org_path, tuned_path = Path(model_org), Path(model_tuned)
    for p in (org_path, tuned_path):
        if p.is_dir():
            raise ToolkitError(f"{p}: is a folder; extraction needs single-file .safetensors/.ckpt checkpoints")
    org, _ = open_streaming(org_path)
    tuned, _ = open_streaming(tuned_path)
    org_shapes, tuned_shapes = tensor_shapes(org), tensor_shapes(tuned)
    family = resolve_family(org_shapes, org_path, family)
    tuned_family = resolve_family(tuned_shapes, tuned_path, family)
    if tuned_family != family:
        raise ToolkitError(f"{org_path} is {FAMILY_NAMES[family]} but {tuned_path} is {FAMILY_NAMES[tuned_family]}")
    targets = select_targets(org_shapes, family, conv_dim)
    _check_pair(org_shapes, tuned_shapes, targets, org_path, tuned_path)
    te_differs = part_differs(org, tuned, targets, load_dtype, min_diff, text_encoder=True)
    unet_differs = part_differs(org, tuned, targets, load_dtype, 0.0, text_encoder=False)
    if not te_differs and not unet_differs:
        raise ToolkitError(f"--model_tuned {tuned_path}: does not differ from --model_org {org_path} (U-Net: no "
                           f"weight differs; text encoders: no weight differs by more than --min_diff {min_diff:g})"
                           "; nothing to extract, no file written")
    if not te_differs:
        log.info("Text encoder is same. Extract U-Net only. (no change above --min_diff %g)", min_diff)
        targets = {n: t for n, t in targets.items() if not n.startswith("lora_te")}
    if not unet_differs:
        log.warning("U-Net: no weight differs between the models; extracting the text encoders only")
        targets = {n: t for n, t in targets.items() if n.startswith("lora_te")}
    dev = torch.device(device) if device else torch.device("cpu")
    generator = torch.Generator(device=dev).manual_seed(seed)
    modules = {}
    for name, delta in tqdm(iter_deltas(org, tuned, targets, load_dtype), total=len(targets), desc="extracting",
                            unit="module"):
        kxk = delta.ndim == 4 and tuple(delta.shape[2:]) != (1, 1)
        try:
            modules[name] = decompose(delta, conv_dim if kxk else dim, dev, clamp_quantile, generator)
        except torch.linalg.LinAlgError as e:  # finite weights whose difference overflows float32
            raise ToolkitError(f"{name}: the difference of the models cannot be decomposed "
                               f"({str(e).splitlines()[0][:120]}); are both models sane?") from None
    return modules, family


def extract_metadata(family: str, v_parameterization: bool, dim: int, conv_dim: int | None, save_to: str | Path,
                     no_metadata: bool = False) -> dict[str, str]:
    """sd-scripts' metadata for an extracted LoRA: minimum `ss_*` set (alpha = float(dim)) and modelspec."""
    args = {"conv_dim": str(conv_dim), "conv_alpha": str(float(conv_dim))} if conv_dim else {}
    meta = minimum_metadata(family, v_parameterization, "networks.lora", dim, float(dim), args)
    if not no_metadata:
        meta.update(modelspec(family, v_parameterization, lora=True, title=Path(save_to).stem))
    return meta

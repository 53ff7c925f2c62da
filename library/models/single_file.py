"""Original-layout single-file checkpoints (.safetensors/.ckpt) <-> Diffusers/transformers models.

One code path for every size of SD1, SD2 and SDXL: configs come from `arch`, names from `library.keys`.
Models are built on the meta device and filled with the file's tensors, so a 7 GB SDXL file loads without
random initialisation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from library.errors import ToolkitError
from library.files import LazySafetensors, load_state_dict, open_streaming
from library.keys import UNET_PREFIX, VAE_PREFIX, clip, detect_family, te_specs
from library.keys import unet as unet_keys
from library.keys import vae as vae_keys
from library.models import arch, fp8
from library.models.bundle import ModelBundle
from library.models.streaming import write_tensors

log = logging.getLogger(__name__)


def _fill(model: torch.nn.Module, sd: dict[str, torch.Tensor], what: str, path: Path) -> torch.nn.Module:
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [k for k in sd if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{name} {len(ks)} (e.g. {ks[0]})" for name, ks in (("missing", missing), ("unexpected", unexpected),
                                                               ("wrong shape", wrong)) if ks
        )
        raise ToolkitError(f"{path}: {what} weights do not fit the architecture read from the file: {detail}")
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: sd[k] for k in sd.keys() if k.startswith(prefix)}


def _shapes(sd: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _pooled_dim(keys: Mapping[str, torch.Tensor], family: str) -> int | None:
    """SDXL: the width of the pooled text embedding the U-Net is conditioned on (OpenCLIP `text_projection` is
    [width, projection]); read from the header shape, no tensor is loaded."""
    if family != "sdxl":
        return None
    key = te_specs(family)[1].ckpt_prefix + "text_projection"
    shape = keys.shape(key) if isinstance(keys, LazySafetensors) and key in keys else (
        tuple(keys[key].shape) if key in keys else None)
    return shape[1] if shape and len(shape) == 2 else None


def _build_unet(sd: dict[str, torch.Tensor], family: str, v_param: bool, path: Path,
                pooled_dim: int | None = None) -> UNet2DConditionModel:
    try:
        config = arch.unet_config(_shapes(sd), family, v_param, pooled_dim)
        layout = unet_keys.layout_from_original_keys(sd)
        converted = {unet_keys.original_to_diffusers(k, layout): v for k, v in sd.items()}
    except (KeyError, ValueError, StopIteration) as e:
        raise ToolkitError(f"{path}: U-Net layout not recognised ({e})") from None
    with init_empty_weights():
        model = UNet2DConditionModel(**config)
    return _fill(model, converted, "U-Net", path)


def _build_vae(sd: dict[str, torch.Tensor], family: str, path: Path) -> AutoencoderKL:
    try:
        config = arch.vae_config(_shapes(sd), family)
    except (KeyError, ValueError) as e:
        raise ToolkitError(f"{path}: VAE layout not recognised ({e})") from None
    levels = vae_keys.vae_levels(sd)
    converted = {}
    for k, v in sd.items():
        if vae_keys.needs_reshape(k) and v.ndim == 4:
            v = v[:, :, 0, 0]
        converted[vae_keys.original_to_diffusers(k, levels)] = v
    with init_empty_weights():
        model = AutoencoderKL(**config)
    return _fill(model, converted, "VAE", path)


def _build_te(sd: dict[str, torch.Tensor], spec, family: str, path: Path):  # noqa: ANN001 - TESpec
    """Returns (model, unused original keys relative to the TE prefix)."""
    unused: dict[str, torch.Tensor] = {}
    if spec.layout == "hf":
        hf = {}
        for k, v in sd.items():
            if k.endswith("position_ids") or k.startswith("logit_scale"):
                unused[k] = v
            elif k.startswith(("text_model.", "text_projection")):
                hf[k] = v
            else:  # old SD1 files lack the text_model level
                hf["text_model." + k] = v
        pad = arch.EOS
    else:
        try:
            n = clip.openclip_layers(sd)
        except ValueError:
            raise ToolkitError(f"{path}: text encoder has no transformer blocks") from None
        # SD2 runs the penultimate block's output: the last block is kept aside, as sd-scripts and Diffusers do
        hf, unused = clip.openclip_to_hf(sd, n - 1 if family == "sd2" else None)
        pad = 0
    with_proj = family == "sdxl" and spec.layout == "openclip"
    try:
        config = CLIPTextConfig(**arch.clip_config(_shapes(hf), spec.layout == "openclip", pad, with_proj))
    except (KeyError, ValueError) as e:
        raise ToolkitError(f"{path}: text encoder layout not recognised ({e})") from None
    cls = CLIPTextModelWithProjection if with_proj else CLIPTextModel
    with init_empty_weights():
        model = cls(config)
    model = _fill(model, clip.for_model(hf, model), "text encoder", path)
    return model, unused


def split_checkpoint(sd: Mapping[str, torch.Tensor], path: Path, family: str | None = None) -> tuple[str, Mapping]:
    """Detect (or take) the family and split the flat dict into parts; unknown layouts fail clearly."""
    detected = detect_family(sd.keys())
    family = family or detected
    if family is None or not any(k.startswith(UNET_PREFIX) for k in sd):
        raise ToolkitError(f"{path}: unknown checkpoint layout: no SD1/SD2/SDXL U-Net and text-encoder keys found")
    if detected and detected != family:
        log.warning("%s: keys look like %s but %s was asked for; using %s", path, detected, family, family)
    return family, sd


class _CastingView(Mapping):
    """Reads one tensor at a time from the file and casts it, so peak memory is about one model in `dtype`.
    With `dtype` fp8, each tensor goes straight from the file's bytes to fp8 (those that stay wide, see
    `fp8.stays_wide`, to `compute`): no wider copy of the model is ever held."""

    def __init__(self, source: Mapping[str, torch.Tensor], dtype: torch.dtype | None, bar=None,  # noqa: ANN001
                 compute: torch.dtype | None = None) -> None:
        self.source, self.dtype, self.bar, self.compute = source, dtype, bar, compute

    def __getitem__(self, key: str) -> torch.Tensor:
        lazy = isinstance(self.source, LazySafetensors)
        ndim = len(self.source.shape(key)) if lazy else self.source[key].ndim
        dtype = fp8.part_dtype(key, ndim, self.dtype, self.compute)
        if lazy:
            source = self.source
            cast = (lambda t, d: fp8.narrow(t, d, key, True, source.last_bounds)) if dtype is fp8.FP8 else None
            v = self.source.get_as(key, dtype, cast)
        else:
            v = self.source[key]
            v = fp8.narrow(v, dtype, key) if dtype is not None and v.is_floating_point() else v
        if self.bar is not None:
            self.bar.update(1)
        return v

    def __iter__(self):  # noqa: ANN204
        return iter(self.source)

    def __len__(self) -> int:
        return len(self.source)


def _close(source: Mapping) -> None:
    """Close a streamed safetensors file now (a `.ckpt` is a plain dict)."""
    if isinstance(source, LazySafetensors):
        source.close()


def load_single_file(path: str | Path, family: str | None = None, v_parameterization: bool = False,
                     dtype: torch.dtype | None = torch.float32, progress: bool = False, keep_extra: bool = True,
                     vae_dtype: torch.dtype | None = None, unet_dtype: torch.dtype | None = None,
                     te_dtype: torch.dtype | None = None, with_unet: bool = True) -> ModelBundle:
    """Load an original-layout checkpoint; `family` ("sd1"/"sd2"/"sdxl") overrides detection.

    Tensors are read one at a time without mmap, each cast to `dtype` (`vae_dtype` for the VAE, default the
    same; `dtype=None` keeps the stored dtypes) as it arrives, so the peak is the models themselves: a mapped
    file would keep every page it touched resident until the end of loading (measured on a real-shape SD1.5:
    2 GiB above the loaded models). `keep_extra=False` skips the keys no model uses (EMA copies and such), which
    only a faithful re-save needs; `progress` shows a tqdm bar over the tensors read. `unet_dtype`/`te_dtype`
    (default `dtype`) store those parts differently: float8_e4m3fn for `--fp8_base`, `dtype` then being the
    compute dtype of the tensors that stay wide. `with_unet=False` leaves the U-Net out (`unet` None): a trainer
    that caches what the VAE and text encoders give, then frees them, loads it afterwards (`load_unet_file`), so
    the models never all sit in memory at once.
    """
    from tqdm import tqdm

    path = Path(path)
    raw, _ = open_streaming(path)
    family, _ = split_checkpoint(raw, path, family)
    keys_ = list(raw.keys())
    bar = tqdm(total=len(keys_), desc="loading checkpoint", unit="tensor") if progress else None
    sd = _CastingView(raw, dtype, bar)
    used = {UNET_PREFIX, VAE_PREFIX, *(s.ckpt_prefix for s in te_specs(family))}
    extra = {k: sd[k] for k in keys_ if keep_extra and not any(k.startswith(p) for p in used)}
    unet = None
    if with_unet:
        unet_sd = _CastingView(raw, unet_dtype or dtype, bar, dtype)
        unet = _build_unet(_strip(unet_sd, UNET_PREFIX), family, v_parameterization, path, _pooled_dim(raw, family))
    if not any(k.startswith(VAE_PREFIX) for k in keys_):
        raise ToolkitError(f"{path}: no VAE weights (first_stage_model.*) in the checkpoint")
    vae_sd = _CastingView(raw, dtype if vae_dtype is None else vae_dtype, bar)
    vae = _build_vae(_strip(vae_sd, VAE_PREFIX), family, path)
    tes = []
    te_sd = _CastingView(raw, te_dtype or dtype, bar, dtype)
    for spec in te_specs(family):
        part = _strip(te_sd, spec.ckpt_prefix)
        if not part:
            raise ToolkitError(f"{path}: no text-encoder weights under {spec.ckpt_prefix!r} for a {family} model")
        te, unused = _build_te(part, spec, family, path)
        tes.append(te)
        if keep_extra:
            extra.update({spec.ckpt_prefix + k: v for k, v in unused.items()})
    if bar is not None:
        bar.close()
    _close(raw)
    for model in (unet, *tes):
        if model is not None:
            fp8.fast_forward(model)  # a no-op unless stored in fp8
    from library.tokenizer import load_tokenizers

    return ModelBundle(family, unet, vae, tes, load_tokenizers(family), extra, path, v_parameterization)


def load_unet_file(path: str | Path, family: str, v_parameterization: bool = False,
                   dtype: torch.dtype | None = torch.float32, unet_dtype: torch.dtype | None = None
                   ) -> UNet2DConditionModel:
    """The U-Net of a single-file checkpoint on its own, read and cast as `load_single_file` reads it."""
    path = Path(path)
    raw, _ = open_streaming(path)
    try:
        unet_sd = _CastingView(raw, unet_dtype or dtype, None, dtype)
        unet = _build_unet(_strip(unet_sd, UNET_PREFIX), family, v_parameterization, path, _pooled_dim(raw, family))
        return fp8.fast_forward(unet)
    finally:
        _close(raw)


def to_original_state_dict(bundle: ModelBundle) -> dict[str, torch.Tensor]:
    """The bundle as one flat original-layout state dict (extra keys included)."""
    out: dict[str, torch.Tensor] = {}
    layout = unet_keys.layout_from_config(bundle.unet.config)
    for k, v in bundle.unet.state_dict().items():
        out[UNET_PREFIX + unet_keys.diffusers_to_original(k, layout)] = v
    levels = len(bundle.vae.config.block_out_channels)
    for k, v in bundle.vae.state_dict().items():
        ok = vae_keys.diffusers_to_original(k, levels)
        out[VAE_PREFIX + ok] = v[:, :, None, None] if vae_keys.needs_reshape(ok) and v.ndim == 2 else v
    for spec, te in zip(te_specs(bundle.family), bundle.text_encoders):
        hf = {clip.canonical(k): v for k, v in te.state_dict().items() if not k.endswith("position_ids")}
        if spec.layout == "hf":
            out.update({spec.ckpt_prefix + k: v for k, v in hf.items()})
        else:
            out.update({spec.ckpt_prefix + k: v for k, v in clip.hf_to_openclip(hf).items()})
    out.update(bundle.extra)
    if bundle.family == "sd2":
        _fill_sd2_extras(out, bundle.text_encoders[0].config.num_hidden_layers)
    return out


def _fill_sd2_extras(out: dict[str, torch.Tensor], n: int) -> None:
    """A Diffusers-born SD2 lacks the unused last OpenCLIP block; repeat the previous one, as sd-scripts does."""
    prefix = te_specs("sd2")[0].ckpt_prefix + "transformer.resblocks."
    if any(k.startswith(f"{prefix}{n}.") for k in out):
        return
    for k in [k for k in out if k.startswith(f"{prefix}{n - 1}.")]:
        out[f"{prefix}{n}." + k[len(f"{prefix}{n - 1}."):]] = out[k].clone()
    hidden = out[f"{prefix}0.ln_1.weight"].shape[0]
    out.setdefault(te_specs("sd2")[0].ckpt_prefix + "text_projection", torch.eye(hidden))
    out.setdefault(te_specs("sd2")[0].ckpt_prefix + "logit_scale", torch.tensor(4.6052))


def save_single_file(bundle: ModelBundle, path: str | Path, dtype: torch.dtype | None = None,
                     metadata: dict[str, str] | None = None, epoch: int = 0, global_step: int = 0) -> None:
    """Write the bundle in the original layout (safetensors or .ckpt by extension), atomically.

    safetensors is streamed tensor by tensor (cast on the way), so the save adds one tensor to the models in memory.
    """
    from tqdm import tqdm

    sd = to_original_state_dict(bundle)
    with tqdm(total=len(sd), desc="saving checkpoint", unit="tensor") as bar:
        write_tensors(path, sd, dtype, metadata, bar, extra={"epoch": epoch, "global_step": global_step})


def load_vae_file(path: str | Path, family: str = "sd1", dtype: torch.dtype | None = torch.float32) -> AutoencoderKL:
    """A VAE on its own: a VAE-only file (original names, with or without `first_stage_model.`) or the VAE of a
    full single-file checkpoint (`--vae`)."""
    path = Path(path)
    lazy, _ = load_state_dict(path, lazy=True)  # a full checkpoint: read only its VAE tensors
    prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in lazy) else ""
    parts = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
    keys = [k for k in lazy if k.startswith(prefix) and k[len(prefix):].startswith(parts)]
    if not any(k[len(prefix):].startswith("encoder.down.") for k in keys):
        raise ToolkitError(f"{path}: not a VAE file in the original layout (no encoder.down.* keys)")
    sd = {}
    for k in keys:
        v = lazy[k]
        sd[k[len(prefix):]] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
    return _build_vae(sd, family, path)

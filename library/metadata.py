"""kohya `ss_*` minimum metadata and `modelspec.*` (SAI model spec) for LoRA and checkpoint files."""

from __future__ import annotations

import datetime
import json
import time

ARCH = {
    ("sd1", False): "stable-diffusion-v1",
    ("sd1", True): "stable-diffusion-v1",
    ("sd2", False): "stable-diffusion-v2-512",
    ("sd2", True): "stable-diffusion-v2-768-v",
    ("sdxl", False): "stable-diffusion-xl-v1-base",
    ("sdxl", True): "stable-diffusion-xl-v1-base",
}


def base_model_version(family: str, v_parameterization: bool = False) -> str:
    if family == "sdxl":
        return "sdxl_base_v1-0"
    return ("sd_v2" if family == "sd2" else "sd_v1") + ("_v" if v_parameterization else "")


def family_from_metadata(meta: dict[str, str]) -> str | None:
    """Family named by `ss_base_model_version`/`ss_v2`/`modelspec.architecture`, if any."""
    ver = meta.get("ss_base_model_version", "")
    arch = meta.get("modelspec.architecture", "")
    if ver.startswith("sdxl") or "xl" in arch:
        return "sdxl"
    if ver.startswith("sd_v2") or meta.get("ss_v2") == "True" or "v2" in arch:
        return "sd2"
    if ver.startswith("sd_v1") or meta.get("ss_v2") == "False" or "v1" in arch:
        return "sd1"
    return None


def minimum_metadata(family: str, v_parameterization: bool, network_module: str, dim, alpha,  # noqa: ANN001
                     network_args: dict | None = None) -> dict[str, str]:
    """`SS_METADATA_MINIMUM_KEYS`: ss_v2, ss_base_model_version, module, dim, alpha (and args when given)."""
    meta = {
        "ss_v2": str(family == "sd2"),
        "ss_base_model_version": base_model_version(family, v_parameterization),
        "ss_network_module": network_module,
        "ss_network_dim": str(dim),
        "ss_network_alpha": str(alpha),
    }
    if network_args is not None:
        meta["ss_network_args"] = json.dumps(network_args)
    return meta


def modelspec(family: str, v_parameterization: bool, lora: bool, title: str | None = None,
              resolution: str | None = None, merged_from: str | None = None, clip_skip: int | None = None,
              extra: dict[str, str] | None = None) -> dict[str, str]:
    """`modelspec.*` keys as sd-scripts writes them (spec 1.0.1)."""
    arch = ARCH[(family, v_parameterization)] + ("/lora" if lora else "")
    impl = "diffusers" if lora and family != "sdxl" else "https://github.com/Stability-AI/generative-models"
    if resolution is None:
        resolution = "1024x1024" if family == "sdxl" else ("768x768" if family == "sd2" and v_parameterization
                                                           else "512x512")
    meta = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": arch,
        "modelspec.implementation": impl,
        "modelspec.title": title or f"LoRA@{int(time.time())}",
        "modelspec.resolution": resolution,
        "modelspec.date": datetime.datetime.now().replace(microsecond=0).isoformat(),
        "modelspec.prediction_type": "v" if v_parameterization else "epsilon",
    }
    if merged_from:
        meta["modelspec.merged_from"] = merged_from
    if clip_skip is not None:
        meta["modelspec.encoder_layer"] = str(clip_skip)
    meta.update(extra or {})
    return meta

"""Diffusers folders: load with their own configs (local files only), save in the same form."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from library.errors import ToolkitError
from library.models.bundle import ModelBundle


def is_diffusers_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "unet").is_dir()


def load_diffusers_dir(path: str | Path, family: str | None = None, v_parameterization: bool = False,
                       dtype: torch.dtype | None = torch.float32, vae_dtype: torch.dtype | None = None) -> ModelBundle:
    """Load `unet/`, `vae/`, `text_encoder/` (and `text_encoder_2/`, tokenizers) from a local folder."""
    path = Path(path)
    for sub in ("unet", "vae", "text_encoder"):
        if not (path / sub).is_dir():
            raise ToolkitError(f"{path}: not a Diffusers model folder (no {sub}/ subfolder)")
    kw = {"local_files_only": True}
    if dtype is not None:
        kw["torch_dtype"] = dtype
    try:
        unet = UNet2DConditionModel.from_pretrained(path / "unet", **kw)
        vae_kw = kw if vae_dtype is None else {**kw, "torch_dtype": vae_dtype}
        vae = AutoencoderKL.from_pretrained(path / "vae", **vae_kw)
        tes = [CLIPTextModel.from_pretrained(path / "text_encoder", **kw)]
        if (path / "text_encoder_2").is_dir():
            tes.append(CLIPTextModelWithProjection.from_pretrained(path / "text_encoder_2", **kw))
    except (OSError, ValueError) as e:
        raise ToolkitError(f"{path}: cannot load Diffusers folder ({str(e).splitlines()[0]})") from None
    if family is None:
        family = "sdxl" if len(tes) == 2 else ("sd2" if tes[0].config.hidden_size == 1024 else "sd1")
        if family == "sd1" and tes[0].config.hidden_act == "gelu":
            family = "sd2"  # small SD2-style models: OpenCLIP text towers use gelu, CLIP-L quick_gelu
    if v_parameterization is False and (path / "scheduler" / "scheduler_config.json").exists():
        cfg = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        v_parameterization = cfg.get("prediction_type") == "v_prediction"
    from library.tokenizer import load_tokenizers

    return ModelBundle(family, unet.eval(), vae.eval(), [t.eval() for t in tes], load_tokenizers(family, str(path)),
                       {}, path, v_parameterization)


def save_diffusers_dir(bundle: ModelBundle, path: str | Path, dtype: torch.dtype | None = None) -> None:
    """Write a folder that `StableDiffusionPipeline`/`StableDiffusionXLPipeline.from_pretrained` can open."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise ToolkitError(f"{path}: output folder exists and is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        parts = {"unet": bundle.unet, "vae": bundle.vae, "text_encoder": bundle.text_encoders[0]}
        if len(bundle.text_encoders) > 1:
            parts["text_encoder_2"] = bundle.text_encoders[1]
        for name, model in parts.items():
            kwargs = {"safe_serialization": True}
            if dtype is not None:
                model = model.to(dtype)
            model.save_pretrained(tmp / name, **kwargs)
        for i, tok in enumerate(bundle.tokenizers):
            tok.save_pretrained(tmp / ("tokenizer" if i == 0 else f"tokenizer_{i + 1}"))
        sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                              clip_sample=False, prediction_type="v_prediction" if bundle.v_parameterization else "epsilon")
        sched.save_pretrained(tmp / "scheduler")
        cls = "StableDiffusionXLPipeline" if bundle.is_sdxl else "StableDiffusionPipeline"
        index = {"_class_name": cls, "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                 "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                 "scheduler": ["diffusers", "DDPMScheduler"]}
        if bundle.is_sdxl:
            index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                         tokenizer_2=["transformers", "CLIPTokenizer"])
        else:
            index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        if path.exists():
            path.rmdir()
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

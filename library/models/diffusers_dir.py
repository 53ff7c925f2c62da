"""Diffusers folders: load with their own configs (local files only), save in the same form."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from library.errors import ToolkitError
from library.files import LazySafetensors, atomic_dir
from library.models.bundle import ModelBundle
from library.models.streaming import write_tensors


def is_diffusers_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "unet").is_dir()


def stored_dtype(folder: Path, variant: str | None = None) -> torch.dtype | None:
    """dtype of the first floating tensor of a component's safetensors weights (None when unknown)."""
    suffix = f".{variant}.safetensors" if variant else ".safetensors"
    for stem in ("diffusion_pytorch_model", "model"):
        names = [stem + suffix]
        index = folder / (stem + suffix + ".index.json")
        if index.is_file():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        for name in names:
            if (folder / name).is_file():
                tensors = LazySafetensors(folder / name)
                return next((tensors.dtype(k) for k in tensors if tensors.dtype(k).is_floating_point), None)
    return None


def load_diffusers_dir(path: str | Path, family: str | None = None, v_parameterization: bool = False,
                       dtype: torch.dtype | None = torch.float32, variant: str | None = None,
                       vae_dtype: torch.dtype | None = None) -> ModelBundle:
    """Load `unet/`, `vae/`, `text_encoder/` (and `text_encoder_2/`, tokenizers) from a local folder.

    `dtype=None` keeps each component in the dtype it is stored in; `variant` picks `*.<variant>.safetensors`;
    `vae_dtype` (default `dtype`) lets a half-precision model keep a float32 VAE.
    """
    path = Path(path)
    for sub in ("unet", "vae", "text_encoder"):
        if not (path / sub).is_dir():
            raise ToolkitError(f"{path}: not a Diffusers model folder (no {sub}/ subfolder)")

    def kw(sub: str) -> dict:
        out = {"local_files_only": True, "variant": variant}
        chosen = dtype if dtype is not None else stored_dtype(path / sub, variant)
        if chosen is not None:
            out["torch_dtype"] = chosen
        return out

    try:
        unet = UNet2DConditionModel.from_pretrained(path / "unet", **kw("unet"))
        vae_kw = kw("vae") if vae_dtype is None else {**kw("vae"), "torch_dtype": vae_dtype}
        vae = AutoencoderKL.from_pretrained(path / "vae", **vae_kw)
        tes = [CLIPTextModel.from_pretrained(path / "text_encoder", **kw("text_encoder"))]
        if (path / "text_encoder_2").is_dir():
            tes.append(CLIPTextModelWithProjection.from_pretrained(path / "text_encoder_2", **kw("text_encoder_2")))
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


def _write_component(model: torch.nn.Module, folder: Path, dtype: torch.dtype | None, bar,  # noqa: ANN001
                     shown: Path) -> None:
    """config.json and the weights as `save_pretrained` names them, streamed one tensor at a time (errors name
    `shown`, the folder's final path)."""
    folder.mkdir(parents=True)
    if hasattr(model, "save_config"):  # diffusers
        model.save_config(folder)
        weights = "diffusion_pytorch_model.safetensors"
    else:  # transformers
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(folder)
        weights = "model.safetensors"
    write_tensors(folder / weights, model.state_dict(), dtype, {"format": "pt"}, bar, shown=shown / weights)


def save_diffusers_dir(bundle: ModelBundle, path: str | Path, dtype: torch.dtype | None = None,
                       reference: str | Path | None = None) -> None:
    """Write a folder that `StableDiffusionPipeline`/`StableDiffusionXLPipeline.from_pretrained` can open.

    Weights are streamed tensor by tensor (peak memory: the models, not a second serialized copy), into a
    temporary folder renamed into place. `reference`: a Diffusers folder whose scheduler and tokenizers are copied.
    """
    from tqdm import tqdm

    with atomic_dir(path) as tmp:
        parts = {"unet": bundle.unet, "vae": bundle.vae, "text_encoder": bundle.text_encoders[0]}
        if len(bundle.text_encoders) > 1:
            parts["text_encoder_2"] = bundle.text_encoders[1]
        total = sum(len(m.state_dict()) for m in parts.values())
        with tqdm(total=total, desc="saving Diffusers folder", unit="tensor") as bar:
            for name, model in parts.items():
                _write_component(model, tmp / name, dtype, bar, Path(path) / name)
        for i, tok in enumerate(bundle.tokenizers):
            tok.save_pretrained(tmp / ("tokenizer" if i == 0 else f"tokenizer_{i + 1}"))
        sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                              clip_sample=False, prediction_type="v_prediction" if bundle.v_parameterization else "epsilon")
        sched.save_pretrained(tmp / "scheduler")
        if reference is not None:
            _copy_reference(Path(reference), tmp)
        cls = "StableDiffusionXLPipeline" if bundle.is_sdxl else "StableDiffusionPipeline"
        index = {"_class_name": cls, "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                 "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                 "scheduler": ["diffusers", "DDPMScheduler"]}
        if bundle.is_sdxl:
            index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                         tokenizer_2=["transformers", "CLIPTokenizer"])
        else:
            index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
        if reference is not None and (Path(reference) / "model_index.json").is_file():
            ref = json.loads((Path(reference) / "model_index.json").read_text())
            if "scheduler" in ref:
                index["scheduler"] = ref["scheduler"]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))


def _copy_reference(reference: Path, tmp: Path) -> None:
    """Scheduler and tokenizer folders of a local Diffusers model replace the defaults (sd-scripts' --reference_model)."""
    for sub in ("scheduler", "tokenizer", "tokenizer_2"):
        if (reference / sub).is_dir() and (tmp / sub).is_dir():
            shutil.rmtree(tmp / sub)
            shutil.copytree(reference / sub, tmp / sub)

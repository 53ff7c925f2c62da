"""Pretrain the embedded default model on CPU: the VAE is written (4x4 block averages, `vae.py`), its latents are
shifted and scaled inside `quant_conv`/`post_quant_conv` so that `latent * 0.18215` has zero mean and unit
variance (the SD1 convention every trainer and sampler assumes), then the U-Net and the CLIP text encoder learn
together on the diffusion loss over captioned scenes. The text encoder learns the templated captions from scratch with
the real CLIP vocabulary; "sks" and "orange" stay untrained tokens, free for the quickstart LoRA.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from tqdm import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from library.default_model import scenes
from library.default_model.config import PretrainConfig
from library.default_model.vae import block_average_vae
from library.generate.schedulers import SCHEDULE
from library.models.arch import LATENT_SCALE
from library.models.bundle import ModelBundle
from library.models.factory import default_configs

log = logging.getLogger(__name__)
SIZE = 64


@dataclass
class Losses:
    """Loss curve as (phase, step, loss) rows, and the last smoothed value of each phase."""

    rows: list[tuple[str, int, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)

    def add(self, phase: str, step: int, value: float) -> None:
        self.rows.append((phase, step, value))
        tail = [v for p, _, v in self.rows[-50:] if p == phase]
        self.final[phase] = sum(tail) / len(tail)


def build_models(seed: int) -> ModelBundle:
    """Fresh seeded models in the default layout."""
    from library.tokenizer import load_tokenizers

    cfg = default_configs()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg["unet"])
    vae = AutoencoderKL(**cfg["vae"])
    te = CLIPTextModel(CLIPTextConfig(**cfg["text_encoders"][0]))
    return ModelBundle("sd1", unet, vae, [te], load_tokenizers("sd1"))


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _lr_factor(step: int, total: int | None, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth (`total` None: constant, so a run stopped at step N holds
    the same weights as a run of N steps)."""
    if step < warmup:
        return (step + 1) / warmup
    if total is None:
        return 1.0
    return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def normalise_latents(vae: AutoencoderKL, rng: np.random.Generator, n: int = 512) -> None:
    """Fold a per-channel shift and one scale into quant_conv/post_quant_conv (an exact reparametrisation), so
    `mean * 0.18215` is centred with unit variance; the log-variance is pinned tiny, so sampling returns the mean."""
    x = _to_tensor([scenes.render(scenes.caption_scene(rng)[0]) for _ in range(n)])
    z = torch.cat([vae.encode(x[i:i + 64]).latent_dist.mean for i in range(0, n, 64)])
    mean = z.mean(dim=(0, 2, 3))
    k = 1.0 / (LATENT_SCALE["sd1"] * float((z - mean[None, :, None, None]).std()))
    q, pq = vae.quant_conv, vae.post_quant_conv
    c = mean.numel()
    q.bias[:c] = k * (q.bias[:c] - mean)
    q.weight[:c] *= k
    q.weight[c:] = 0
    q.bias[c:] = -30.0  # std e^-15: a deterministic encoder, whatever the caller samples
    pq.bias += pq.weight[:, :, 0, 0] @ mean
    pq.weight /= k


@torch.no_grad()
def encode_pool(bundle: ModelBundle, cfg: PretrainConfig, rng: np.random.Generator) -> tuple[torch.Tensor, list]:
    """Latents (scaled) and captions of `cfg.pool` captioned scenes."""
    latents, captions = [], []
    fillers = scenes.filler_words(bundle.tokenizers[0].get_vocab())
    for _ in tqdm(range(0, cfg.pool, 64), desc="encode", dynamic_ncols=True):
        pairs = [scenes.caption_scene(rng, fillers=fillers, filler_rate=cfg.filler_rate) for _ in range(64)]
        captions += [c for _, c in pairs]
        z = bundle.vae.encode(_to_tensor([scenes.render(s) for s, _ in pairs])).latent_dist.mean
        latents.append(z * LATENT_SCALE["sd1"])
    return torch.cat(latents)[: cfg.pool], captions[: cfg.pool]


def _token_ids(bundle: ModelBundle, captions: list[str]) -> torch.Tensor:
    tok = bundle.tokenizers[0]
    return tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids


def train_diffusion(bundle: ModelBundle, latents: torch.Tensor, captions: list[str], cfg: PretrainConfig,
                    losses: Losses, checkpoint: Callable[[ModelBundle, int, Losses], None], save_every: int) -> ModelBundle:
    """Joint U-Net + text-encoder training (epsilon, SD1 noise schedule, min-SNR weights); returns the EMA."""
    unet, te = bundle.unet.train(), bundle.text_encoders[0].train()
    ema = copy.deepcopy(bundle)
    ema.unet.eval()
    ema.text_encoders[0].eval()
    ids = _token_ids(bundle, captions)
    empty = _token_ids(bundle, [""])[0]
    noise_sched = DDPMScheduler(**{k: v for k, v in SCHEDULE.items() if k != "steps_offset"})
    snr = noise_sched.alphas_cumprod / (1 - noise_sched.alphas_cumprod)
    weights = torch.clamp(snr, max=cfg.min_snr_gamma) / snr
    params = list(unet.parameters()) + list(te.parameters())
    ema_params = list(ema.unet.parameters()) + list(ema.text_encoders[0].parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, None, 100))
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    bar = tqdm(range(cfg.steps), desc="unet+te", dynamic_ncols=True)
    for step in bar:
        idx = torch.randint(0, len(latents), (cfg.batch,), generator=gen)
        batch_ids = ids[idx].clone()
        drop = torch.rand(cfg.batch, generator=gen) < cfg.caption_dropout
        batch_ids[drop] = empty
        x0 = latents[idx]
        flip = torch.rand(cfg.batch, generator=gen) < 0.5  # exact in latent space: blocks align with the image
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        noise = torch.randn(x0.shape, generator=gen)
        noise = noise + cfg.noise_offset * torch.randn(x0.shape[:2] + (1, 1), generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.batch,), generator=gen)
        xt = noise_sched.add_noise(x0, noise, t)
        pred = unet(xt, t, te(batch_ids).last_hidden_state).sample
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * weights[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(cfg.ema, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        losses.add("diffusion", step, per_sample.mean().item())
        bar.set_postfix(loss=f"{losses.final['diffusion']:.4f}")
        if save_every and (step + 1) % save_every == 0 and step + 1 < cfg.steps:
            checkpoint(ema, step + 1, losses)
    return ema


def pretrain(cfg: PretrainConfig, checkpoint: Callable[[ModelBundle, int, Losses], None], save_every: int = 250
             ) -> tuple[ModelBundle, Losses]:
    """The whole run, deterministic for a seed (and a thread count): written VAE, latent pool, U-Net + text
    encoder."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    bundle = build_models(cfg.seed)
    losses = Losses()
    block_average_vae(bundle.vae)
    normalise_latents(bundle.vae, rng, cfg.norm_pool)
    for p in bundle.vae.parameters():
        p.requires_grad_(False)
    latents, captions = encode_pool(bundle, cfg, rng)
    log.info("latent pool: %d, std %.3f", len(latents), float(latents.std()))
    ema = train_diffusion(bundle, latents, captions, cfg, losses, checkpoint, save_every)
    return ema, losses

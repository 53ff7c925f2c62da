"""The diffusion training objective: noise schedule, noise variants, timesteps, target and loss weighting.

Formulas follow sd-scripts (DDPM scaled-linear betas 0.00085..0.012 over 1000 steps, no clipping) so losses and
LoRAs are comparable between the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from library.errors import ToolkitError

NUM_TIMESTEPS = 1000


def alphas_cumprod(zero_terminal_snr: bool = False) -> torch.Tensor:
    """ᾱ_t of the SD noise schedule (float64 math, float32 result); optionally rescaled to zero terminal SNR."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, NUM_TIMESTEPS, dtype=torch.float64) ** 2
    ab = torch.cumprod(1.0 - betas, 0)
    if zero_terminal_snr:
        sqrt_ab = ab.sqrt()
        first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
        sqrt_ab = (sqrt_ab - last) * first / (first - last)  # last step -> 0, first unchanged
        ab = sqrt_ab ** 2
        alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
        ab = torch.cumprod(alphas, 0)
    return ab.float()


@dataclass
class ObjectiveConfig:
    """Loss and noise options (command-line names)."""

    v_parameterization: bool = False
    noise_offset: float | None = None
    noise_offset_random_strength: bool = False
    adaptive_noise_scale: float | None = None
    multires_noise_iterations: int | None = None
    multires_noise_discount: float = 0.3
    ip_noise_gamma: float | None = None
    ip_noise_gamma_random_strength: bool = False
    min_snr_gamma: float | None = None
    scale_v_pred_loss_like_noise_pred: bool = False
    v_pred_like_loss: float | None = None
    debiased_estimation_loss: bool = False
    zero_terminal_snr: bool = False
    min_timestep: int = 0
    max_timestep: int = NUM_TIMESTEPS
    loss_type: str = "l2"
    huber_schedule: str = "snr"
    huber_c: float = 0.1
    huber_scale: float = 1.0

    def validate(self) -> None:
        if self.adaptive_noise_scale is not None and self.noise_offset is None:
            raise ToolkitError("--adaptive_noise_scale needs --noise_offset")
        if self.scale_v_pred_loss_like_noise_pred and not self.v_parameterization:
            raise ToolkitError("--scale_v_pred_loss_like_noise_pred needs --v_parameterization")
        if self.v_pred_like_loss and self.v_parameterization:
            raise ToolkitError("--v_pred_like_loss cannot be used with --v_parameterization")
        if not 0 <= self.min_timestep < self.max_timestep <= NUM_TIMESTEPS:
            raise ToolkitError(f"--min_timestep/--max_timestep must satisfy 0 <= min < max <= {NUM_TIMESTEPS}, "
                               f"got {self.min_timestep}/{self.max_timestep}")
        if self.loss_type not in ("l1", "l2", "huber", "smooth_l1"):
            raise ToolkitError(f"--loss_type {self.loss_type!r}: use l1, l2, huber or smooth_l1")
        if self.huber_schedule not in ("constant", "exponential", "snr"):
            raise ToolkitError(f"--huber_schedule {self.huber_schedule!r}: use constant, exponential or snr")


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float) -> torch.Tensor:
    """Multi-resolution noise: add upsampled coarse noise with decaying weight, then renormalise."""
    b, c, h, w = noise.shape
    for i in range(iterations):
        r = torch.rand(1).item() * 2 + 2
        wi, hi = max(1, int(w / r ** i)), max(1, int(h / r ** i))
        noise = noise + F.interpolate(torch.randn(b, c, hi, wi, device=noise.device, dtype=noise.dtype),
                                      size=(h, w), mode="bilinear") * discount ** i
        if wi == 1 or hi == 1:
            break
    return noise / noise.std()


class Objective:
    """Draws noise and timesteps, builds the model input and target, and weights the loss."""

    def __init__(self, config: ObjectiveConfig) -> None:
        config.validate()
        self.cfg = config
        self.alphas_cumprod = alphas_cumprod(config.zero_terminal_snr)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        ab = self.alphas_cumprod.to(t.device)[t]
        return (ab / (1 - ab)).clamp(min=1e-3)  # zero terminal SNR would divide by 0 at the last step

    def noise_like(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        noise = torch.randn_like(latents)
        if cfg.noise_offset:
            offset = cfg.noise_offset
            if cfg.noise_offset_random_strength:
                offset = offset * torch.rand(1, device=latents.device)
            if cfg.adaptive_noise_scale is not None:
                offset = (offset + cfg.adaptive_noise_scale * latents.mean(dim=(2, 3), keepdim=True).abs()).clamp(min=0)
            noise = noise + offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1, device=latents.device)
        elif cfg.multires_noise_iterations:
            noise = pyramid_noise(noise, cfg.multires_noise_iterations, cfg.multires_noise_discount)
        return noise

    def timesteps(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.randint(self.cfg.min_timestep, self.cfg.max_timestep, (batch,), device=device)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.alphas_cumprod.to(latents.device)[t].view(-1, 1, 1, 1).to(latents.dtype)
        if self.cfg.ip_noise_gamma:
            gamma = self.cfg.ip_noise_gamma
            if self.cfg.ip_noise_gamma_random_strength:
                gamma = gamma * torch.rand(1, device=latents.device)
            noise = noise + gamma * torch.randn_like(latents)
        return ab.sqrt() * latents + (1 - ab).sqrt() * noise

    def target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.cfg.v_parameterization:
            return noise
        ab = self.alphas_cumprod.to(latents.device)[t].view(-1, 1, 1, 1).to(latents.dtype)
        return ab.sqrt() * noise - (1 - ab).sqrt() * latents

    def _huber_c(self, t: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.huber_schedule == "exponential":
            alpha = -math.log(cfg.huber_c) / NUM_TIMESTEPS
            return torch.exp(-alpha * t.float()) * cfg.huber_scale
        if cfg.huber_schedule == "snr":
            ab = self.alphas_cumprod.to(t.device)[t]
            sigma = ((1 - ab) / ab).sqrt()
            return (1 - cfg.huber_c) / (1 + sigma) ** 2 + cfg.huber_c
        return torch.full(t.shape, cfg.huber_c * cfg.huber_scale, device=t.device)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor,
             sample_weights: torch.Tensor | None = None, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar loss of a batch: per-element loss (times the loss masks), mean per sample, sample weights, SNR
        weightings, mean."""
        per_sample = self.loss_map(pred, target, t, masks).mean(dim=(1, 2, 3))
        return self._weighted(per_sample, t, sample_weights)

    def loss_map(self, pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor,
                 masks: torch.Tensor | None = None) -> torch.Tensor:
        """Per-element loss [B, C, h, w]; with `masks` ([B, H, W], 0..1 at image size) each latent pixel is
        weighted by the mask averaged over the pixels it covers (sd-scripts' apply_masked_loss)."""
        cfg = self.cfg
        pred, target = pred.float(), target.float()
        if cfg.loss_type == "l2":
            loss = F.mse_loss(pred, target, reduction="none")
        elif cfg.loss_type == "l1":
            loss = F.l1_loss(pred, target, reduction="none")
        else:
            c = self._huber_c(t).view(-1, 1, 1, 1)
            d2 = (pred - target) ** 2
            loss = 2 * ((d2 + c * c).sqrt() - c)
            if cfg.loss_type == "huber":
                loss = loss * c
        if masks is not None:
            weight = F.interpolate(masks.to(loss.device, loss.dtype).unsqueeze(1), size=loss.shape[2:], mode="area")
            loss = loss * weight
        return loss

    def _weighted(self, loss: torch.Tensor, t: torch.Tensor, sample_weights: torch.Tensor | None) -> torch.Tensor:
        cfg = self.cfg
        if sample_weights is not None:
            loss = loss * sample_weights.to(loss.device)
        needs_snr = cfg.min_snr_gamma or cfg.scale_v_pred_loss_like_noise_pred or cfg.v_pred_like_loss \
            or cfg.debiased_estimation_loss
        if needs_snr:
            snr = self.snr(t).float()
            if cfg.min_snr_gamma:
                clipped = snr.clamp(max=cfg.min_snr_gamma)
                loss = loss * (clipped / (snr + 1) if cfg.v_parameterization else clipped / snr)
            capped = snr.clamp(max=1000)
            if cfg.scale_v_pred_loss_like_noise_pred:
                loss = loss * capped / (capped + 1)
            if cfg.v_pred_like_loss:
                loss = loss + loss / (capped / (capped + 1)) * cfg.v_pred_like_loss
            if cfg.debiased_estimation_loss:
                loss = loss / (capped + 1) if cfg.v_parameterization else loss / capped.sqrt()
        return loss.mean()

"""A VAE whose weights are written, not trained: the encoder averages each pixel block (4x4 for 3 levels) (RGB -> latent
channels 0-2, channel 3 unused), the decoder paints each block back. Exact, deterministic and free to build.

Why not train one: every SD VAE ends in GroupNorm, which subtracts each group's spatial mean, so a solid colour
only survives through patterns a network needs long training to find -- far beyond a CPU budget. Here each
norm group holds a signal pair (v, -v): the group mean is exactly zero, and with |v| ~ 1e-4 the variance stays
far below the norm's eps, so GroupNorm multiplies by 1/sqrt(eps) -- a linear map. SiLU is linear enough at
+10. Residual branches and attention outputs are zero (identities); the stride-2 convolutions average 2x2.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

SIGNAL = 1e-4  # |v| into every GroupNorm: variance <= 1e-8, against eps 1e-6
OFFSET = 10.0  # SiLU(OFFSET + u) - SiLU(OFFSET) = u (1 + 4e-4) for |u| <= 1


def _zero(module: torch.nn.Module) -> None:
    for p in module.parameters():
        p.zero_()


def _pairs_in(conv: torch.nn.Conv2d, n: int) -> None:
    """Centre tap: input channel k -> output channels (2k, 2k+1) as (+SIGNAL, -SIGNAL)."""
    c = conv.kernel_size[0] // 2
    for k in range(n):
        conv.weight[2 * k, k, c, c] = SIGNAL
        conv.weight[2 * k + 1, k, c, c] = -SIGNAL


def _pairs_out(norm: torch.nn.GroupNorm, conv: torch.nn.Conv2d, n: int) -> None:
    """GroupNorm -> SiLU -> conv back to n plain channels (channel 2k of each pair)."""
    eps = norm.eps
    gain = 1.0 / SIGNAL * eps ** 0.5  # GroupNorm gives v / sqrt(eps); this brings it back to the input scale
    norm.weight.fill_(0.0)
    norm.bias.fill_(OFFSET)
    norm.weight[: 2 * n] = gain
    c = conv.kernel_size[0] // 2
    for k in range(n):
        conv.weight[k, 2 * k, c, c] = 1.0
    conv.bias[:n] = -OFFSET * torch.sigmoid(torch.tensor(OFFSET))


def _identity_taps(conv: torch.nn.Conv2d, taps: list[tuple[int, int]], value: float) -> None:
    for i in range(conv.out_channels):
        for a, b in taps:
            conv.weight[i, i, a, b] = value


@torch.no_grad()
def block_average_vae(vae: AutoencoderKL) -> AutoencoderKL:
    """Overwrite `vae` (SD layout, even channel counts, no channel changes between levels) in place."""
    _zero(vae)
    enc, dec = vae.encoder, vae.decoder
    for norm in [m for m in vae.modules() if isinstance(m, torch.nn.GroupNorm)]:
        norm.weight.fill_(1.0)
    _pairs_in(enc.conv_in, 3)
    for block in enc.down_blocks:
        for down in block.downsamplers or []:  # pads (0,1,0,1), stride 2: taps (0..1, 0..1) are one 2x2 block
            _identity_taps(down.conv, [(0, 0), (0, 1), (1, 0), (1, 1)], 0.25)
    _pairs_out(enc.conv_norm_out, enc.conv_out, 3)
    vae.quant_conv.weight[:4, :4, 0, 0] = torch.eye(4)
    vae.quant_conv.bias[4:] = -30.0  # log-variance: sampling returns the mean
    vae.post_quant_conv.weight[:, :, 0, 0] = torch.eye(4)
    _pairs_in(dec.conv_in, 3)
    for block in dec.up_blocks:
        for up in block.upsamplers or []:  # nearest x2, then this 3x3 convolution: keep the centre
            _identity_taps(up.conv, [(1, 1)], 1.0)
    _pairs_out(dec.conv_norm_out, dec.conv_out, 3)
    return vae

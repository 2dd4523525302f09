"""What the U-Net predicts, and the noise prediction every sampler is given.

A model's ``config.prediction_type`` says what its U-Net was trained to output at ``x_t = sqrt(a) x0 +
sqrt(1 - a) eps`` (``a`` = alpha_bar of the timestep, SD 1.5's schedule):

- ``epsilon``: the noise ``eps`` (SD 1.5, the sd15 preset);
- ``v_prediction``: the velocity ``v = sqrt(a) eps - sqrt(1 - a) x0`` (SD 2's parameterisation, the tiny preset). Its
  loss weighs the content error ``|x0_hat - x0|^2`` in full at high noise, where an epsilon loss weighs it by the
  signal-to-noise ratio (about 0.005 at t = 999), so a model trained for a short time learns what the audio must put
  in the mouth instead of only denoising what it can already see.

The samplers, dual CFG, known-region blending and inversion all work on the noise prediction: :func:`noise_predictor`
turns the U-Net into one, ``eps = sqrt(a) v + sqrt(1 - a) x_t``, an identity for epsilon models.
"""

from __future__ import annotations

import torch
from torch import nn

from stabledub_core.pipeline.schedulers import SD15_NOISE_SCHEDULE


def training_alphas_cumprod() -> torch.Tensor:
    """``(1000,)`` float64 alpha_bar of SD 1.5's training schedule (scaled-linear betas)."""
    s = SD15_NOISE_SCHEDULE
    betas = torch.linspace(s["beta_start"] ** 0.5, s["beta_end"] ** 0.5, s["num_train_timesteps"],
                           dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def alpha_bar_at(timestep: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """alpha_bar at (possibly fractional) timesteps; between integer steps sigma = sqrt((1 - a) / a) is interpolated
    linearly, as diffusers' Euler scheduler places its fractional timesteps.

    Args:
        timestep: () or (B,) timesteps in [0, 999].
        alphas_cumprod: (1000,) the training schedule's alpha_bar.
    """
    t = torch.as_tensor(timestep, dtype=torch.float64).clamp(0, len(alphas_cumprod) - 1)
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    low = t.floor().long()
    high = (low + 1).clamp(max=len(sigmas) - 1)
    frac = t - low
    sigma = sigmas[low] * (1 - frac) + sigmas[high] * frac
    return 1.0 / (1.0 + sigma ** 2)


def velocity_to_epsilon(v: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """``eps = sqrt(a) v + sqrt(1 - a) x_t``.

    Args:
        v, x_t: (B, ...) the predicted velocity and the noisy latent it was predicted at (computed in float32).
        alpha_bar: () or (B,) signal level of each sample's timestep.
    """
    a = alpha_bar.to(v.device, torch.float32).reshape(-1, *[1] * (v.dim() - 1))
    return (a.sqrt() * v.float() + (1 - a).sqrt() * x_t.float()).to(v.dtype)


def predicted_clean(prediction: torch.Tensor, noisy: torch.Tensor, alpha_bar: torch.Tensor,
                    prediction_type: str) -> torch.Tensor:
    """The one-step estimate of the clean latents x0 from the U-Net's output.

    Args:
        prediction, noisy: (B, ...) the U-Net's output and the noisy latents it saw.
        alpha_bar: (B,) signal level of each sample's timestep.
        prediction_type: ``epsilon`` or ``v_prediction``.
    """
    a = alpha_bar.to(prediction.device, torch.float32).reshape(-1, *[1] * (prediction.dim() - 1))
    prediction, noisy = prediction.float(), noisy.float()
    if prediction_type == "epsilon":
        return (noisy - (1 - a).sqrt() * prediction) / a.sqrt()
    return a.sqrt() * noisy - (1 - a).sqrt() * prediction  # v = sqrt(a) eps - sqrt(1 - a) x0


class VelocityToNoise(nn.Module):
    """A v-prediction U-Net with the samplers' contract:
    ``forward(sample (B, F, 13, h, w), timestep (B,), tokens (B, F, T, C)) -> eps (B, F, 4, h, w)``.

    Args:
        unet: the ``StableDubUNet``.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        self.alphas_cumprod = training_alphas_cumprod()  # float64 on the CPU (MPS has no float64)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        v = self.unet(sample, timestep, encoder_hidden_states)  # (B, F, 4, h, w)
        x_t = sample[:, :, :v.shape[2]]  # the noisy latent leads the U-Net input (build_unet_input)
        t = torch.as_tensor(timestep).detach().cpu().expand(sample.shape[0])
        return velocity_to_epsilon(v, x_t, alpha_bar_at(t, self.alphas_cumprod))


def noise_predictor(model) -> nn.Module:
    """The noise predictor of a ``StableDub`` model: its U-Net itself (epsilon) or :class:`VelocityToNoise`."""
    # StableDub checks prediction_type when it is built
    return model.unet if model.config.prediction_type == "epsilon" else VelocityToNoise(model.unet)

"""Small denoisers with the U-Net's forward contract, for the sampler tests.

``TargetDenoiser`` predicts the noise for which the clean latent is a known per-frame target, so a correct sampler
must return that target for every frame (frame order, window averaging and chunking become checkable).
"""

from __future__ import annotations

import numpy as np
import torch

from stabledub_core.pipeline.guidance import Branch
from stabledub_core.pipeline.sampler import ClipConditions

_BETAS = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
_ACP = torch.cumprod(1.0 - _BETAS, dim=0)
_SIGMAS = ((1 - _ACP) / _ACP).sqrt().numpy()


def alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """SD 1.5's alpha_bar at (possibly fractional) timesteps, interpolated in sigma like diffusers' Euler."""
    sigma = torch.from_numpy(np.interp(t.double().cpu().numpy(), np.arange(1000), _SIGMAS))
    return 1.0 / (1.0 + sigma ** 2)


class TargetDenoiser:
    """eps such that the predicted clean latent is ``x0 = (1 - beta) * m + beta * mean_window(m) + gain * tok``.

    ``m`` is the masked-crop latent (input channels 4:8), ``mean_window`` its mean over the frames of the window
    (a stand-in for temporal mixing, which makes windows disagree), ``tok`` the per-frame mean of the tokens.
    Records the batch size of every call.
    """

    def __init__(self, beta: float = 0.0, gain: float = 0.0):
        self.beta = beta
        self.gain = gain
        self.batch_sizes: list[int] = []

    def x0(self, sample: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        m = sample[:, :, 4:8].double()
        x0 = (1 - self.beta) * m + self.beta * m.mean(dim=1, keepdim=True)
        return x0 + self.gain * tokens.double().mean(dim=(2, 3))[:, :, None, None, None]

    def __call__(self, sample, timestep, encoder_hidden_states):
        self.batch_sizes.append(sample.shape[0])
        ab = alpha_bar(timestep).view(-1, 1, 1, 1, 1)
        x = sample[:, :, :4].double()
        eps = (x - ab.sqrt() * self.x0(sample, encoder_hidden_states)) / (1 - ab).sqrt()
        return eps.to(sample.dtype)


class LinearDenoiser:
    """A fixed linear noise predictor: a channel-mixing matrix plus a token term."""

    def __init__(self, seed: int = 0, scale: float = 0.2):
        gen = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(4, 13, generator=gen) * scale

    def __call__(self, sample, timestep, encoder_hidden_states):
        eps = (sample.movedim(2, -1) @ self.weight.to(sample.dtype).T).movedim(-1, 2)  # mix channels
        return eps + 0.1 * encoder_hidden_states.mean(dim=(2, 3))[:, :, None, None, None]


def make_conditions(num_frames: int, size: int = 4, tokens: int = 3, width: int = 5, seed: int = 0,
                    target: torch.Tensor | None = None) -> ClipConditions:
    """Random conditions; ``target`` (F, 4, h, w) replaces the masked latents (the TargetDenoiser's target)."""
    gen = torch.Generator().manual_seed(seed)
    masked = torch.randn(num_frames, 4, size, size, generator=gen) if target is None else target
    mask = (torch.rand(num_frames, 1, size, size, generator=gen) > 0.5).float()
    appearance = torch.randn(4, size, size, generator=gen)
    toks = {b: torch.randn(num_frames, tokens, width, generator=gen) for b in Branch}
    return ClipConditions(masked, mask, appearance, toks)


def smooth_target(num_frames: int, size: int = 4) -> torch.Tensor:
    """A target latent that changes slowly and linearly from frame to frame."""
    f = torch.arange(num_frames, dtype=torch.float32).view(-1, 1, 1, 1)
    base = torch.linspace(-1, 1, 4 * size * size).view(1, 4, size, size)
    return base + 0.05 * f

"""The latent scaling factor of an autoencoder trained here (``train vae``).

The U-Net's noise schedule assumes unit-variance latents. SD's autoencoder reaches that by multiplying its latents
by 0.18215 (one over their standard deviation on its training images, measured once). A VAE trained by ``train vae``
has latents of whatever spread its training left, so at the end of the run the same measurement is made on its own
training crops: ``scaling_factor = 1 / std(posterior means)``, written into the run's model config, from where
``train export`` puts it in the checkpoint.
"""

from __future__ import annotations

import math

import torch

from stabledub_core.errors import NumericalError

CALIBRATION_SAMPLES = 256  # crops the standard deviation is measured on (spread evenly over the dataset)


@torch.no_grad()
def measure_latent_scale(vae, dataset, samples: int = CALIBRATION_SAMPLES, batch_size: int = 16) -> float:
    """One over the standard deviation of the VAE's (unscaled) posterior means over crops of ``dataset``.

    Args:
        vae: the trained ``AutoencoderKL``.
        dataset: a dataset whose items hold ``"crop"``: (3, S, S) floats in [0, 1] (``Stage1Dataset``).
        samples: crops to measure, taken at evenly spaced indices.
        batch_size: crops per encoder call.

    Returns:
        the scaling factor.
    """
    count = min(samples, len(dataset))
    indices = torch.linspace(0, len(dataset) - 1, count).round().long().unique().tolist()
    param = next(vae.parameters())
    total, total_sq, n = 0.0, 0.0, 0
    was_training = vae.training
    vae.eval()
    for start in range(0, len(indices), batch_size):
        crops = torch.stack([dataset[i]["crop"] for i in indices[start:start + batch_size]])  # (b, 3, S, S)
        z = vae.encode(crops.to(param.device, param.dtype) * 2 - 1).latent_dist.mean.double()  # (b, C, h, w)
        total, total_sq, n = total + z.sum().item(), total_sq + (z * z).sum().item(), n + z.numel()
    vae.train(was_training)
    std = math.sqrt(max(total_sq / n - (total / n) ** 2, 0.0))
    if not math.isfinite(std) or std <= 0:
        raise NumericalError(f"the autoencoder's latents have standard deviation {std}: the VAE run diverged; "
                            "train it again with a lower --learning-rate")
    return 1.0 / std

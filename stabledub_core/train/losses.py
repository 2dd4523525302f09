"""Training losses: the denoising loss with the latent coarse facial loss (StableDub eq. 5, 6) and the VAE's.

L_DM is the mean squared error between the U-Net's target (the noise, or the velocity for v-prediction models) and its
prediction over every latent element. L_LCF (eq. 5) is the
same squared error weighted (Hadamard product) by the coarse mouth mask Mc at latent size, so the lower face counts
twice; the total (eq. 6) is ``L_DM + lcf_weight * L_LCF`` with ``lcf_weight = 1`` in the paper. Both are means over
all elements (batch, frames, channels, latent pixels), so they do not depend on how a global batch is split over
processes or micro-steps.

The VAE's loss is the L1 reconstruction error plus a weighted KL term, as SD's autoencoder (without its perceptual
and adversarial terms). ``mouth_weight`` adds the same emphasis L_LCF puts on the lower face, on pixels: the L1 error
weighted by Mc. A small autoencoder trained briefly on whole crops spends its capacity on the large smooth regions
(skin, background) and blurs the mouth, the one region the dub regenerates.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class DiffusionLosses(NamedTuple):
    total: torch.Tensor
    dm: torch.Tensor
    lcf: torch.Tensor


class DiffusionSyncLosses(NamedTuple):
    """Stage 2 with the sync loss: ``total = dm + lcf_weight * lcf + sync_weight * sync`` (``train.sync_loss``)."""

    total: torch.Tensor
    dm: torch.Tensor
    lcf: torch.Tensor
    sync: torch.Tensor


def diffusion_losses(prediction: torch.Tensor, target: torch.Tensor, mc_latent: torch.Tensor,
                     lcf_weight: float = 1.0) -> DiffusionLosses:
    """L_total = L_DM + lcf_weight * L_LCF (eq. 6).

    Args:
        prediction: (B, F, C, h, w) the U-Net's output.
        target: (B, F, C, h, w) what it should be: the noise that was added (epsilon) or the velocity.
        mc_latent: (B, F, 1, h, w) coarse mouth mask Mc at latent size (``masks.exposure.to_latent``), 0/1.
        lcf_weight: weight of L_LCF.

    Returns:
        (total, L_DM, L_LCF), scalars in float32.
    """
    error = (prediction.float() - target.float()).pow(2)  # (B, F, C, h, w)
    dm = error.mean()
    lcf = (error * mc_latent.to(error.dtype)).mean()  # Mc broadcast over the channels
    return DiffusionLosses(dm + lcf_weight * lcf, dm, lcf)


class VAELosses(NamedTuple):
    total: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    mouth: torch.Tensor  # the L1 error weighted by Mc


def vae_losses(reconstruction: torch.Tensor, target: torch.Tensor, posterior, kl_weight: float,
               mc: torch.Tensor | None = None, mouth_weight: float = 0.0) -> VAELosses:
    """The autoencoder's loss: L1 reconstruction (in [-1, 1] pixels) + ``mouth_weight`` * Mc-weighted L1 +
    ``kl_weight`` * KL to N(0, I).

    Args:
        reconstruction: (N, 3, H, W) decoded images in [-1, 1].
        target: (N, 3, H, W) input images in [-1, 1].
        posterior: the encoder's ``DiagonalGaussianDistribution`` (diffusers).
        kl_weight: weight of the KL term (per latent element, as the reconstruction is per pixel).
        mc: (N, 1, H, W) coarse mouth mask Mc (0/1), or None (no mouth term).
        mouth_weight: weight of the Mc-weighted L1 term.
    """
    error = (reconstruction.float() - target.float()).abs()  # (N, 3, H, W)
    rec = error.mean()
    mouth = (error * mc.to(error.dtype)).mean() if mc is not None else torch.zeros((), device=error.device)
    kl = posterior.kl().mean() / posterior.mean[0].numel()  # diffusers sums the KL over a sample's elements
    return VAELosses(rec + mouth_weight * mouth + kl_weight * kl, rec, kl, mouth)

"""L_DM + L_LCF (eq. 5, 6) and the VAE's loss."""

from __future__ import annotations

import pytest
import torch

from stabledub_core.train.losses import diffusion_losses, vae_losses


def test_the_coarse_facial_loss_counts_only_the_error_inside_mc():
    noise = torch.zeros(2, 3, 4, 8, 8)
    mc = torch.zeros(2, 3, 1, 8, 8)
    mc[..., 2:6, 2:6] = 1  # a quarter of each latent frame
    outside = noise.clone()
    outside[..., 0, 0] = 1.0  # error only outside Mc
    losses = diffusion_losses(outside, noise, mc)
    assert losses.lcf.item() == 0.0
    assert losses.dm.item() == pytest.approx(1 / 64)
    inside = noise.clone()
    inside[..., 3, 3] = 2.0  # error 4 in one cell inside Mc, in every channel
    losses = diffusion_losses(inside, noise, mc, lcf_weight=0.5)
    assert losses.dm.item() == pytest.approx(4 / 64)
    assert losses.lcf.item() == pytest.approx(4 / 64)  # Mc broadcast over the channels
    assert losses.total.item() == pytest.approx(4 / 64 + 0.5 * 4 / 64)


def test_the_losses_are_means_so_a_batch_split_in_two_averages_to_the_whole():
    generator = torch.Generator().manual_seed(0)
    pred, noise = torch.randn(4, 2, 4, 8, 8, generator=generator), torch.randn(4, 2, 4, 8, 8, generator=generator)
    mc = (torch.rand(4, 2, 1, 8, 8, generator=generator) > 0.5).float()
    whole = diffusion_losses(pred, noise, mc).total
    halves = [diffusion_losses(pred[i:i + 2], noise[i:i + 2], mc[i:i + 2]).total for i in (0, 2)]
    assert whole.item() == pytest.approx(sum(halves).item() / 2, rel=1e-6)


def test_the_vae_loss_is_l1_plus_weighted_kl():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    moments = torch.zeros(1, 8, 4, 4)  # mean 0, log-variance 0: KL 0
    posterior = DiagonalGaussianDistribution(moments)
    target = torch.zeros(1, 3, 16, 16)
    losses = vae_losses(target + 0.5, target, posterior, kl_weight=1.0)
    assert losses.reconstruction.item() == pytest.approx(0.5)
    assert losses.kl.item() == pytest.approx(0.0, abs=1e-7)
    moments[:, :4] = 1.0  # mean 1: KL 0.5 per element
    losses = vae_losses(target, target, DiagonalGaussianDistribution(moments), kl_weight=2.0)
    assert losses.kl.item() == pytest.approx(0.5)
    assert losses.total.item() == pytest.approx(1.0)


def test_the_vae_mouth_term_weighs_only_the_error_inside_mc():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    posterior = DiagonalGaussianDistribution(torch.zeros(1, 8, 4, 4))  # KL 0
    target = torch.zeros(1, 3, 16, 16)
    mc = torch.zeros(1, 1, 16, 16)
    mc[..., 8:, 4:12] = 1  # the lower middle quarter of the crop
    outside = target.clone()
    outside[..., :8, :] = 1.0  # error 1 on the upper half only
    losses = vae_losses(outside, target, posterior, 0.0, mc, mouth_weight=4.0)
    assert losses.mouth.item() == 0.0
    assert losses.total.item() == pytest.approx(losses.reconstruction.item()) == pytest.approx(0.5)
    inside = target.clone()
    inside[..., 8:, 4:12] = 1.0  # error 1 exactly on Mc (a quarter of the pixels)
    losses = vae_losses(inside, target, posterior, 0.0, mc, mouth_weight=4.0)
    assert losses.reconstruction.item() == pytest.approx(0.25)
    assert losses.mouth.item() == pytest.approx(0.25)
    assert losses.total.item() == pytest.approx(0.25 + 4.0 * 0.25)
    assert vae_losses(inside, target, posterior, 0.0).total.item() == pytest.approx(0.25)  # no Mc: plain L1

"""The sampler with the real (tiny-preset) U-Net and lip-habit module: the contracts fit together."""

import numpy as np
import torch

from stabledub_core.models.config import get_preset
from stabledub_core.models.habit import LipHabitModulation
from stabledub_core.models.unet import StableDubUNet
from stabledub_core.pipeline.conditions import clip_conditions, habit_vector
from stabledub_core.pipeline.sampler import SamplerConfig, sample_clip


def test_tiny_model_samples_overlapping_windows():
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    unet = StableDubUNet(cfg.unet).eval()
    habit = LipHabitModulation(cfg.habit, cfg.audio.feature_size).eval()
    frames, latent = 3, 8
    crops = np.random.default_rng(0).integers(0, 256, (2, cfg.habit.lip_size, cfg.habit.lip_size, 3), np.uint8)
    v = habit_vector(habit, crops)
    assert v.shape == (cfg.habit.hidden_size,)
    # two windows of 2 frames (one shared frame), batched into one forward of the FULL branch
    sampler = SamplerConfig(num_inference_steps=1, scale_audio=1.0, scale_habit=1.0, window=2, overlap=1,
                            window_batch_size=2, seed=5)
    cond = clip_conditions(habit, torch.randn(frames, cfg.audio.tokens_per_frame, cfg.audio.feature_size), v,
                           torch.randn(frames, 4, latent, latent), torch.ones(frames, 1, latent, latent),
                           torch.randn(4, latent, latent), sampler.guidance.branches)
    with torch.no_grad():
        out = sample_clip(unet, cond, sampler)
    assert out.shape == (frames, 4, latent, latent)
    assert torch.isfinite(out).all()

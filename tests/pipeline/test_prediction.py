"""v-prediction: the conversion to the samplers' noise prediction, and the training target."""

from __future__ import annotations

import pytest
import torch

from helpers.sampler_stubs import TargetDenoiser, alpha_bar, make_conditions, smooth_target
from stabledub_core.errors import ModelConfigError
from stabledub_core.models.config import get_preset
from stabledub_core.models.stabledub import StableDub
from stabledub_core.pipeline.prediction import (
    VelocityToNoise,
    alpha_bar_at,
    noise_predictor,
    training_alphas_cumprod,
    velocity_to_epsilon,
)
from stabledub_core.pipeline.sampler import SamplerConfig, sample_clip
from stabledub_core.pipeline.schedulers import SchedulerKind, make_scheduler
from stabledub_core.train.objectives import noise_scheduler


class VelocityTarget(TargetDenoiser):
    """The velocity whose clean latent is :class:`TargetDenoiser`'s x0: ``v = (sqrt(a) x_t - x0) / sqrt(1 - a)``."""

    def __call__(self, sample, timestep, encoder_hidden_states):
        ab = alpha_bar(timestep).view(-1, 1, 1, 1, 1)
        x = sample[:, :, :4].double()
        v = (ab.sqrt() * x - self.x0(sample, encoder_hidden_states)) / (1 - ab).sqrt()
        return v.to(sample.dtype)


def test_alpha_bar_is_the_training_schedule_and_follows_euler_between_steps():
    acp = training_alphas_cumprod()
    assert torch.allclose(acp, noise_scheduler().alphas_cumprod.double(), atol=1e-6)
    euler = make_scheduler(SchedulerKind.EULER)
    euler.set_timesteps(7)
    assert any(float(t) != int(t) for t in euler.timesteps)  # fractional timesteps are exercised
    sigmas = euler.sigmas[:7].double()
    assert torch.allclose(alpha_bar_at(euler.timesteps, acp), 1 / (1 + sigmas ** 2), rtol=1e-5)


def test_velocity_to_epsilon_undoes_diffusers_velocity():
    scheduler = noise_scheduler()
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, 8, 8, generator=gen), torch.randn(3, 2, 4, 8, 8, generator=gen)
    t = torch.tensor([0, 500, 999])
    x_t, v = scheduler.add_noise(x0, eps, t), scheduler.get_velocity(x0, eps, t)
    back = velocity_to_epsilon(v, x_t, alpha_bar_at(t, training_alphas_cumprod()))
    assert (back - eps).abs().max() < 1e-4


@pytest.mark.parametrize("kind", list(SchedulerKind))
def test_a_velocity_model_samples_its_target_with_every_scheduler(kind):
    target = smooth_target(20)
    cond = make_conditions(20, target=target)
    config = SamplerConfig(num_inference_steps=6, scheduler=kind, scale_audio=1.0, scale_habit=1.0)
    out = sample_clip(VelocityToNoise(VelocityTarget()), cond, config)
    tol = 0.15 if kind is SchedulerKind.DDIM else 1e-3  # DDIM stops at alpha_bar[0], as for epsilon models
    assert (out - target).abs().max() < tol
    wrong = sample_clip(VelocityTarget(), cond, config)  # a velocity read as noise lands elsewhere
    assert (wrong - target).abs().max() > 2 * (out - target).abs().max()


def test_the_presets_prediction_types_and_the_predictor_each_gets():
    tiny = StableDub.from_config(get_preset("tiny"))
    assert tiny.config.prediction_type == "v_prediction"
    assert isinstance(noise_predictor(tiny), VelocityToNoise)
    assert get_preset("sd15").prediction_type == "epsilon"
    epsilon = StableDub.from_config(get_preset("tiny"))
    epsilon.config.prediction_type = "epsilon"
    assert noise_predictor(epsilon) is epsilon.unet
    # checkpoints written before the field existed hold epsilon models
    raw = get_preset("tiny").to_json().replace('"prediction_type": "v_prediction", ', "")
    assert "prediction_type" not in raw and type(get_preset("tiny")).from_json(raw).prediction_type == "epsilon"
    config = get_preset("tiny")
    config.prediction_type = "x0"
    with pytest.raises(ModelConfigError, match="prediction_type"):
        StableDub.from_config(config)

"""DDIM inversion of the source clip's latents into starting noise (EdiDub's content-aware editing).

Running DDIM backwards with the conditional model (source audio, lip habit) maps the source latents to a noisy
latent at the first sampling timestep that, denoised again, gives back (nearly) the source. Starting the dubbing
from it instead of fresh noise keeps fine detail the inpainting would otherwise lose (facial hair, motion blur,
occluders); the new audio's tokens then steer the mouth.

Inversion step from signal level ``a`` to the next, noisier level ``a'`` at timestep ``t'`` (DDIM, eta = 0, with
the usual approximation ``eps(x_a) ~ eps(x_a')``)::

    eps = model(x_a, t')
    x_a' = sqrt(a') * (x_a - sqrt(1 - a) * eps) / sqrt(a) + sqrt(1 - a') * eps

It starts at the level the sampler's last step lands on and walks the sampling schedule backwards, so DDIM sampling
over the same schedule retraces it.
"""

from __future__ import annotations

from typing import Callable

import torch

from stabledub_core.errors import SamplerError
from stabledub_core.runtime import Interrupted
from stabledub_core.pipeline.guidance import GuidancePlan
from stabledub_core.pipeline.sampler import (
    ClipConditions,
    Denoiser,
    SamplerConfig,
    StepCallback,
    StopCheck,
    WindowedDenoiser,
)
from stabledub_core.pipeline.schedulers import final_alpha_bar, make_scheduler, noise_levels

NoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_invert(
    eps_fn: NoiseFn,
    latents: torch.Tensor,
    levels: list[tuple[torch.Tensor, float]],
    start_alpha_bar: float,
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
) -> torch.Tensor:
    """Invert clean latents along a sampling schedule.

    Args:
        eps_fn: ``eps_fn(x_t (F, 4, h, w), t) -> eps (F, 4, h, w)``, the (conditional) noise prediction on
            variance-preserving latents.
        latents: ``(F, 4, h, w)`` clean latents of the source crops.
        levels: the sampling schedule as ``(timestep, alpha_bar)`` pairs, noisiest first
            (``schedulers.noise_levels``).
        start_alpha_bar: signal level of ``latents`` (``schedulers.final_alpha_bar``).
        on_step, should_stop: progress callback and interruption check (raises :class:`Interrupted`).

    Returns:
        ``(F, 4, h, w)`` float32 variance-preserving latent at ``levels[0]``.
    """
    x = latents.float()
    a = start_alpha_bar
    total = len(levels)
    for i, (t, a_next) in enumerate(reversed(levels)):
        if should_stop is not None and should_stop():
            raise Interrupted(f"inversion interrupted at step {i} of {total}")
        eps = eps_fn(x, t).to(x.device, torch.float32)
        x0 = (x - (1.0 - a) ** 0.5 * eps) / a ** 0.5
        x = a_next ** 0.5 * x0 + (1.0 - a_next) ** 0.5 * eps
        a = a_next
        if on_step is not None:
            on_step(i + 1, total)
    return x


def invert_clip(
    model_fn: Denoiser,
    conditions: ClipConditions,
    latents: torch.Tensor,
    config: SamplerConfig,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
) -> torch.Tensor:
    """DDIM-invert a clip (or chunk) with the conditional model, windowed like the sampler.

    Args:
        model_fn: the U-Net forward.
        conditions: the clip's conditions; ``tokens[Branch.FULL]`` must hold the SOURCE audio's tokens with the
            habit vector (the condition the source frames were "generated" under).
        latents: ``(F, 4, h, w)`` clean latents of the source crops.
        config: the sampling settings the result will be used with (scheduler, steps, windows).
        device, dtype, on_step, should_stop: as for ``sampler.denoise_chunk``.

    Returns:
        ``(F, 4, h, w)`` float32 latents on the CPU to pass as ``init_latents`` to the sampler.
    """
    if tuple(latents.shape) != tuple(conditions.masked.shape):
        raise SamplerError(f"source latents {tuple(latents.shape)} do not match the conditions' "
                           f"{tuple(conditions.masked.shape)}")
    conditional = GuidancePlan.from_scales(1.0, 1.0)  # only eps(a, h)
    denoiser = WindowedDenoiser(model_fn, conditions, conditional, config.window, config.overlap,
                                config.window_batch_size, device, dtype, should_stop)
    scheduler = make_scheduler(config.scheduler, **config.scheduler_overrides)
    scheduler.set_timesteps(config.num_inference_steps)
    levels = noise_levels(scheduler, config.scheduler)
    x = ddim_invert(denoiser, latents.to(device), levels, final_alpha_bar(scheduler), on_step, should_stop)
    return x.cpu()

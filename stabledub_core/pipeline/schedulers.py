"""diffusers schedulers configured in code with Stable Diffusion 1.5's noise schedule.

The StableDub U-Net is trained with SD 1.5's schedule (1000 steps, scaled-linear betas from 0.00085 to 0.012,
epsilon prediction), so every sampler uses exactly that schedule; only the solver differs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)

from stabledub_core.errors import OptionError

# SD 1.5's noise schedule, shared by every solver.
SD15_NOISE_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


@dataclass(frozen=True)
class SchedulerSpec:
    """How to build one solver.

    Attributes:
        cls: the diffusers scheduler class.
        extra: solver-specific config on top of :data:`SD15_NOISE_SCHEDULE`.
        sigma_space: True when the scheduler's samples are ``x / sqrt(alpha_bar)`` (k-diffusion style, e.g. Euler)
            instead of the variance-preserving ``x_t``; used to convert an inverted latent into its sample space.
    """

    cls: type[SchedulerMixin]
    extra: dict[str, Any] = field(default_factory=dict)
    sigma_space: bool = False


class SchedulerKind(enum.Enum):
    """Available solvers; the value is the user-facing name."""

    DDIM = "ddim"
    DPM_PP_2M = "dpm++2m"
    EULER = "euler"
    UNIPC = "unipc"

    @classmethod
    def parse(cls, name: "str | SchedulerKind") -> "SchedulerKind":
        """Accept an enum member or its name (case-insensitive)."""
        if isinstance(name, cls):
            return name
        try:
            return cls(str(name).lower())
        except ValueError:
            raise OptionError(f"unknown scheduler {name!r}; choose one of {[k.value for k in cls]}") from None


SCHEDULERS: dict[SchedulerKind, SchedulerSpec] = {
    SchedulerKind.DDIM: SchedulerSpec(DDIMScheduler, {"clip_sample": False, "set_alpha_to_one": False}),
    SchedulerKind.DPM_PP_2M: SchedulerSpec(
        DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    SchedulerKind.EULER: SchedulerSpec(EulerDiscreteScheduler, {}, sigma_space=True),
    SchedulerKind.UNIPC: SchedulerSpec(UniPCMultistepScheduler, {}),
}


def make_scheduler(kind: "str | SchedulerKind", **overrides: Any) -> SchedulerMixin:
    """Build a fresh scheduler with SD 1.5's noise schedule.

    Args:
        kind: a :class:`SchedulerKind` or its name (``"ddim"``, ``"dpm++2m"``, ``"euler"``, ``"unipc"``).
        **overrides: config entries replacing the defaults (e.g. ``timestep_spacing="trailing"``).

    Returns:
        A new diffusers scheduler (schedulers are stateful: use one per denoising run).
    """
    spec = SCHEDULERS[SchedulerKind.parse(kind)]
    return spec.cls(**{**SD15_NOISE_SCHEDULE, **spec.extra, **overrides})


def scheduler_spec(kind: "str | SchedulerKind") -> SchedulerSpec:
    """The :class:`SchedulerSpec` of a solver."""
    return SCHEDULERS[SchedulerKind.parse(kind)]


def noise_levels(scheduler: SchedulerMixin, kind: "str | SchedulerKind") -> list[tuple[torch.Tensor, float]]:
    """The sampling schedule as ``(timestep, alpha_bar)`` pairs, noisiest first.

    ``alpha_bar`` is the variance-preserving signal level of each timestep (``x_t = sqrt(a) x0 + sqrt(1-a) eps``);
    for sigma-space solvers it is ``1 / (1 + sigma^2)``. Call after ``scheduler.set_timesteps``.

    Args:
        scheduler: a scheduler from :func:`make_scheduler` with its timesteps set.
        kind: the scheduler's kind.

    Returns:
        One pair per sampling step.
    """
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(...) before asking for its noise levels")
    if scheduler_spec(kind).sigma_space:
        sigmas = scheduler.sigmas[: len(scheduler.timesteps)].double()
        return [(t, float(1.0 / (1.0 + s * s))) for t, s in zip(scheduler.timesteps, sigmas)]
    acp = scheduler.alphas_cumprod
    return [(t, float(acp[int(t)])) for t in scheduler.timesteps]


def final_alpha_bar(scheduler: SchedulerMixin) -> float:
    """Signal level the last sampling step lands on (``alphas_cumprod[0]`` for SD's DDIM, 1 for the others)."""
    final = getattr(scheduler, "final_alpha_cumprod", None)
    return 1.0 if final is None else float(final)


def to_sample_space(x_vp: torch.Tensor, alpha_bar: float, kind: "str | SchedulerKind") -> torch.Tensor:
    """Convert a variance-preserving latent ``x_t`` to the scheduler's sample space at signal level ``alpha_bar``."""
    return x_vp / alpha_bar ** 0.5 if scheduler_spec(kind).sigma_space else x_vp

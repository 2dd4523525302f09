"""Dual classifier-free guidance over the audio and lip-habit conditions (StableDub, eq. 7).

Eq. 7 of the paper::

    eps = eps(0, 0) + la * (eps(a, 0) - eps(0, 0)) + lh * (eps(a, h) - eps(a, 0))

where ``eps(a, h)`` is the U-Net's noise prediction with the audio condition ``a`` and the habit condition ``h``, and
``0`` is the zero embedding of a dropped condition. Expanded, it is a linear combination of three branches::

    eps = (1 - la) * eps(0, 0) + (la - lh) * eps(a, 0) + lh * eps(a, h)

so a branch whose coefficient is zero need not be evaluated at all:

    =====================  =========================================  ==========================
    scales                 branches evaluated (coefficient)           forward batch per window
    =====================  =========================================  ==========================
    la = 1, lh = 1         FULL (1)                                   1
    la = 1, lh = 0         AUDIO (1)                                  1
    la = 0, lh = 0         UNCOND (1)                                 1
    la = lh = l, l != 0,1  UNCOND (1 - l), FULL (l)                   2
    la = 1, lh != 0,1      AUDIO (1 - lh), FULL (lh)                  2
    lh = 0, la != 0,1      UNCOND (1 - la), AUDIO (la)                2
    la = 0, lh != 0        UNCOND (1), AUDIO (-lh), FULL (lh)         3
    otherwise              UNCOND (1 - la), AUDIO (la - lh), FULL (lh) 3
    =====================  =========================================  ==========================

The needed branches are described declaratively by a :class:`GuidancePlan` (branch -> coefficient); the sampler
evaluates exactly those branches in one batched forward (branches concatenated on the batch dimension) and
combines them with :meth:`GuidancePlan.combine`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Mapping

import torch

from stabledub_core.errors import GuidanceError


class Branch(enum.Enum):
    """One condition set of eq. 7. The value is ``(drop_audio, drop_habit)`` for the habit module."""

    UNCOND = (True, True)  # eps(0, 0)
    AUDIO = (False, True)  # eps(a, 0)
    FULL = (False, False)  # eps(a, h)

    @property
    def drop_audio(self) -> bool:
        return self.value[0]

    @property
    def drop_habit(self) -> bool:
        return self.value[1]


# Fixed evaluation order of the branches inside a batched forward.
BRANCH_ORDER: tuple[Branch, ...] = (Branch.UNCOND, Branch.AUDIO, Branch.FULL)


@dataclass(frozen=True)
class GuidancePlan:
    """The branches of eq. 7 that have a non-zero coefficient, with their coefficients.

    Attributes:
        coefficients: mapping branch -> coefficient, only non-zero coefficients, in :data:`BRANCH_ORDER`.
    """

    coefficients: Mapping[Branch, float]

    @classmethod
    def from_scales(cls, scale_audio: float, scale_habit: float) -> "GuidancePlan":
        """Plan for eq. 7 with the audio scale ``la`` and the habit scale ``lh``.

        Args:
            scale_audio: ``la``, the audio guidance scale (1 = no audio guidance).
            scale_habit: ``lh``, the lip-habit guidance scale (1 = no habit guidance).

        Returns:
            The plan; branches whose coefficient is exactly zero are left out.
        """
        for name, value in (("scale_audio", scale_audio), ("scale_habit", scale_habit)):
            if not math.isfinite(value):
                raise GuidanceError(f"{name} must be a finite number, got {value!r}")
        raw = {
            Branch.UNCOND: 1.0 - scale_audio,
            Branch.AUDIO: scale_audio - scale_habit,
            Branch.FULL: scale_habit,
        }
        return cls({branch: float(raw[branch]) for branch in BRANCH_ORDER if raw[branch] != 0.0})

    @property
    def branches(self) -> tuple[Branch, ...]:
        """The branches to evaluate, in batch order."""
        return tuple(self.coefficients)

    def combine(self, eps: torch.Tensor) -> torch.Tensor:
        """Combine the stacked branch predictions.

        Args:
            eps: ``(len(branches) * B, ...)`` predictions, branch-major (as produced by concatenating the branch
                inputs on the batch dimension in :attr:`branches` order).

        Returns:
            ``(B, ...)`` guided noise prediction.
        """
        n = len(self.coefficients)
        if eps.shape[0] % n:
            raise GuidanceError(f"batch of {eps.shape[0]} predictions is not a multiple of {n} branches")
        chunks = eps.chunk(n, dim=0)
        out = None
        for chunk, coefficient in zip(chunks, self.coefficients.values()):
            term = chunk if coefficient == 1.0 else chunk * coefficient
            out = term if out is None else out + term
        return out


def dual_cfg(
    eps_uncond: torch.Tensor,
    eps_audio: torch.Tensor,
    eps_full: torch.Tensor,
    scale_audio: float,
    scale_habit: float,
) -> torch.Tensor:
    """Eq. 7 of StableDub, written as in the paper.

    Args:
        eps_uncond: ``eps(0, 0)``, both conditions replaced by the zero embedding.
        eps_audio: ``eps(a, 0)``, audio only.
        eps_full: ``eps(a, h)``, audio and lip habit.
        scale_audio: ``la``.
        scale_habit: ``lh``.

    Returns:
        The guided noise prediction, same shape as the inputs.
    """
    if not (eps_uncond.shape == eps_audio.shape == eps_full.shape):
        raise GuidanceError(
            f"branch predictions differ in shape: {tuple(eps_uncond.shape)}, {tuple(eps_audio.shape)}, "
            f"{tuple(eps_full.shape)}")
    return (eps_uncond
            + scale_audio * (eps_audio - eps_uncond)
            + scale_habit * (eps_full - eps_audio))

"""The per-avatar lip habit: how one avatar turns the same speech into mouth movements.

A :class:`LipHabit` holds the gains, biases and timing that ``synthetic.speech_drive`` applies to the speech
features (see its docstring for the whole audio -> mouth-state function). Avatars are drawn from a few archetypes
(wide openers, puckerers, mumblers, neutral speakers) with jitter, so two avatars speaking the same words move their
mouths measurably differently, and the habit of a held-out avatar is a known target.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from stabledub_core.errors import OptionError

# Archetype -> (open_gain, open_bias, width_gain, width_bias, round_gain, round_bias, teeth_gain, lag_s,
#               attack_s, release_s): the centre each habit of that archetype is drawn around.
ARCHETYPES: dict[str, tuple[float, ...]] = {
    "neutral": (0.95, 0.02, 0.9, 0.0, 0.8, 0.0, 0.8, -0.04, 0.035, 0.09),
    "wide": (1.3, 0.08, 1.3, 0.22, 0.35, -0.05, 1.1, -0.03, 0.025, 0.07),
    "pucker": (0.75, 0.0, 0.6, -0.22, 1.5, 0.18, 0.4, -0.06, 0.045, 0.12),
    "mumbler": (0.5, -0.02, 0.5, -0.05, 0.5, 0.02, 0.3, -0.02, 0.06, 0.16),
}
_JITTER = (0.08, 0.02, 0.08, 0.04, 0.08, 0.03, 0.08, 0.01, 0.005, 0.01)


@dataclass(frozen=True)
class LipHabit:
    """Gains, biases and timing of the audio -> mouth-state function for one avatar.

    Args:
        archetype: The archetype it was drawn from (a name of :data:`ARCHETYPES`), for reports.
        open_gain: Opening = ``open_bias + open_gain * drive``.
        open_bias: Rest opening.
        width_gain: Width = ``0.5 + width_bias + width_gain * (spread - 0.5)``.
        width_bias: Wide (> 0) or narrow (< 0) resting mouth.
        round_gain: Rounding = ``round_bias + round_gain * rounding drive``.
        round_bias: Resting pucker.
        teeth_gain: How much the teeth show for the same speech.
        lag_s: The mouth at time ``t`` shows the (smoothed) speech of time ``t - lag_s``; negative: the mouth leads
            the sound, as real speakers' lips do.
        attack_s: Time constant of the smoothing while a feature rises.
        release_s: Time constant while it falls.
    """

    archetype: str
    open_gain: float
    open_bias: float
    width_gain: float
    width_bias: float
    round_gain: float
    round_bias: float
    teeth_gain: float
    lag_s: float
    attack_s: float
    release_s: float

    def __post_init__(self):
        if not (self.attack_s > 0 and self.release_s > 0):
            raise OptionError(f"habit time constants must be > 0 s, got attack {self.attack_s}, release "
                              f"{self.release_s}")
        if abs(self.lag_s) > 0.5:
            raise OptionError(f"habit lag must be within +-0.5 s, got {self.lag_s}")

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LipHabit":
        """The habit of :meth:`to_dict`."""
        return cls(**data)


def archetype_habit(archetype: str) -> LipHabit:
    """The centre habit of one archetype (no jitter).

    Args:
        archetype: A name of :data:`ARCHETYPES`.
    """
    if archetype not in ARCHETYPES:
        raise OptionError(f"unknown lip habit archetype {archetype!r}: choose from {', '.join(ARCHETYPES)}")
    return LipHabit(archetype, *ARCHETYPES[archetype])


def mean_habit() -> LipHabit:
    """The mean of the archetype centres (archetype name ``"mean"``): the habit of nobody in particular.

    Avatars draw their archetype uniformly, so this is about the habit a dub that knows none can aim at: the truth
    rendered with it is a habit-blind oracle (it follows the speech exactly). It is the mean of the habits' fields,
    not the habit that minimises the expected mouth-state error, so it is a rough oracle.
    """
    return LipHabit("mean", *(float(v) for v in np.mean(list(ARCHETYPES.values()), axis=0)))


def sample_habit(rng: np.random.Generator, archetype: str | None = None) -> LipHabit:
    """A habit drawn around an archetype.

    Args:
        rng: The avatar's random generator.
        archetype: A name of :data:`ARCHETYPES`, or None to draw one uniformly.

    Returns:
        The :class:`LipHabit` (each field the archetype's value plus Gaussian jitter; time constants kept >= 10 ms).
    """
    names = list(ARCHETYPES)
    name = archetype if archetype is not None else names[int(rng.integers(len(names)))]
    centre = archetype_habit(name)
    values = np.array(ARCHETYPES[name]) + rng.normal(0.0, 1.0, len(_JITTER)) * np.array(_JITTER)
    values[-2:] = np.maximum(values[-2:], 0.01)
    values[-3] = float(np.clip(values[-3], -0.2, 0.1))
    return LipHabit(centre.archetype, *(float(v) for v in values))

"""Smooth head motion: a rotation, a scale and a shift about the neck, each a sum of two sines.

Amplitudes stay inside ``train preprocess``'s default filters (roll <= 20 degrees, motion <= 0.1 face sizes a
frame at 25 fps): at most 5 degrees of roll, 4 % of scale and 4 % of the frame of shift.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class HeadMotion:
    """One avatar's head motion: ``value(t) = sum_i amp_i * sin(2 pi t / period_i + phase_i)`` per channel.

    Args:
        roll_deg: ``(amp1, amp2)`` degrees.
        scale: ``(amp1, amp2)`` relative scale change.
        shift_x: ``(amp1, amp2)`` fraction of the frame.
        shift_y: ``(amp1, amp2)`` fraction of the frame.
        periods: ``(4, 2)`` seconds per channel (roll, scale, x, y) and sine.
        phases: ``(4, 2)`` radians.
    """

    roll_deg: tuple[float, float]
    scale: tuple[float, float]
    shift_x: tuple[float, float]
    shift_y: tuple[float, float]
    periods: tuple[tuple[float, float], ...]
    phases: tuple[tuple[float, float], ...]

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HeadMotion":
        """The motion of :meth:`to_dict`."""
        return cls(tuple(data["roll_deg"]), tuple(data["scale"]), tuple(data["shift_x"]), tuple(data["shift_y"]),
                   tuple(tuple(p) for p in data["periods"]), tuple(tuple(p) for p in data["phases"]))

    def values(self, t: float) -> tuple[float, float, float, float]:
        """``(roll radians, scale, shift_x, shift_y)`` at time ``t`` seconds (shifts as frame fractions)."""
        out = []
        for channel, amps in enumerate((self.roll_deg, self.scale, self.shift_x, self.shift_y)):
            out.append(sum(a * math.sin(2 * math.pi * t / p + ph)
                           for a, p, ph in zip(amps, self.periods[channel], self.phases[channel])))
        return math.radians(out[0]), 1.0 + out[1], out[2], out[3]

    def matrix(self, t: float, pivot: tuple[float, float], size: int) -> np.ndarray:
        """``(2, 3)`` affine from canvas to frame pixels at time ``t``: rotate and scale about ``pivot``, then shift."""
        roll, scale, dx, dy = self.values(t)
        rotate = scale * np.array([[math.cos(roll), -math.sin(roll)], [math.sin(roll), math.cos(roll)]])
        centre = np.asarray(pivot, np.float64)
        shift = centre - rotate @ centre + np.array([dx * size, dy * size])
        return np.hstack([rotate, shift[:, None]])


def sample_motion(rng: np.random.Generator) -> HeadMotion:
    """A random smooth motion (amplitudes in the module docstring, periods 1.5-6 s)."""
    def pair(limit: float) -> tuple[float, float]:
        first = float(rng.uniform(0.3, 0.7) * limit)
        return first, float(rng.uniform(0.0, 1.0) * (limit - first))

    return HeadMotion(roll_deg=pair(5.0), scale=pair(0.04), shift_x=pair(0.04), shift_y=pair(0.025),
                      periods=tuple((float(rng.uniform(3, 6)), float(rng.uniform(1.5, 3))) for _ in range(4)),
                      phases=tuple((float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0, 2 * math.pi)))
                                   for _ in range(4)))

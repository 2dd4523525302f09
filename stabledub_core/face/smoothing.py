"""One-Euro filtering of landmark trajectories, vectorised over points.

The One-Euro filter (Casiez et al., CHI 2012) is a low-pass filter whose cutoff rises with the speed of the signal:
still points are smoothed strongly (no jitter), fast ones hardly at all (no lag). Speeds are measured in face sizes
(inter-ocular distances) per second, so the same parameters fit small and large faces. Mouth and jaw points get their
own, more responsive parameters: speech moves them fast against a still head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stabledub_core.errors import TrackError
from stabledub_core.face.indices import MOUTH, NUM_LANDMARKS, interocular


@dataclass
class OneEuroConfig:
    """Parameters of the landmark smoother.

    Args:
        min_cutoff: cutoff frequency (Hz) of a still point; lower = smoother.
        beta: cutoff increase per unit of speed (inter-ocular distances per second); higher = less lag.
        d_cutoff: cutoff frequency (Hz) of the speed estimate.
        mouth_min_cutoff: ``min_cutoff`` for mouth and jaw points.
        mouth_beta: ``beta`` for mouth and jaw points.
    """

    min_cutoff: float = 1.0
    beta: float = 8.0
    d_cutoff: float = 1.0
    mouth_min_cutoff: float = 1.0
    mouth_beta: float = 16.0


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    """Smoothing factor of an exponential filter with the given cutoff (Hz) at time step ``dt`` (s)."""
    r = 2.0 * math.pi * np.asarray(cutoff) * dt
    return r / (r + 1.0)


class OneEuroFilter:
    """Causal One-Euro filter over a set of 2-D points.

    Args:
        config: filter parameters.
        num_points: number of points P per sample.
        mouth_points: indices of points that use the mouth parameters (default: MediaPipe's mouth and jaw).
    """

    def __init__(self, config: OneEuroConfig | None = None, num_points: int = NUM_LANDMARKS,
                 mouth_points: np.ndarray | None = MOUTH):
        self.config = config or OneEuroConfig()
        self.min_cutoff = np.full(num_points, self.config.min_cutoff)  # (P,)
        self.beta = np.full(num_points, self.config.beta)  # (P,)
        if mouth_points is not None:
            self.min_cutoff[mouth_points] = self.config.mouth_min_cutoff
            self.beta[mouth_points] = self.config.mouth_beta
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next sample passes through unchanged."""
        self._x: np.ndarray | None = None  # (P, 2) filtered position
        self._dx: np.ndarray | None = None  # (P, 2) filtered velocity, pixels/s
        self._t: float | None = None

    def __call__(self, x: np.ndarray, t: float, scale: float | None = None) -> np.ndarray:
        """Filter one sample.

        Args:
            x: (P, 2) point positions.
            t: time of the sample in seconds (increasing).
            scale: length unit for speeds (pixels); default: the inter-ocular distance of the filtered face when
                P = 478, else 1.

        Returns:
            (P, 2) filtered positions (float32).
        """
        x = np.asarray(x, np.float64)
        if self._x is None:
            self._x, self._dx, self._t = x, np.zeros_like(x), t
            return x.astype(np.float32)
        dt = t - self._t
        if dt <= 0:
            raise TrackError(f"One-Euro filter needs increasing times, got {t} after {self._t}")
        if scale is None:
            scale = float(interocular(self._x)) if len(x) == NUM_LANDMARKS else 1.0
        scale = max(scale, 1e-6)
        dx = (x - self._x) / dt  # (P, 2)
        self._dx = self._dx + _alpha(self.config.d_cutoff, dt) * (dx - self._dx)
        speed = np.linalg.norm(self._dx, axis=-1) / scale  # (P,) face sizes per second
        a = _alpha(self.min_cutoff + self.beta * speed, dt)[:, None]  # (P, 1)
        self._x = self._x + a * (x - self._x)
        self._t = t
        return self._x.astype(np.float32)


def smooth_trajectory(points: np.ndarray, times: np.ndarray, config: OneEuroConfig | None = None,
                      mouth_points: np.ndarray | None = MOUTH, scale: float | None = None) -> np.ndarray:
    """Filter a whole trajectory without gaps.

    Args:
        points: (F, P, 2) positions.
        times: (F,) seconds, increasing.
        config: filter parameters.
        mouth_points: indices using the mouth parameters (None: all points use the face parameters).
        scale: length unit for speeds (see ``OneEuroFilter.__call__``).

    Returns:
        (F, P, 2) float32 filtered positions.
    """
    filt = OneEuroFilter(config, num_points=points.shape[1], mouth_points=mouth_points)
    return np.stack([filt(p, float(t), scale) for p, t in zip(points, times)])

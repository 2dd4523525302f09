"""Image and signal metrics of the benchmark: PSNR, SSIM, correlation, flicker, each on plain arrays.

All image metrics take uint8 or float arrays with values in 0..255 and compare a result against a reference of the
same shape; a boolean ``mask`` restricts PSNR and flicker to some pixels.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from stabledub_core.errors import InvalidInputError

SSIM_SIGMA = 1.5  # Gaussian window of SSIM (Wang et al. 2004)
SSIM_C1, SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def _same_shape(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise InvalidInputError(f"cannot compare arrays of shapes {a.shape} and {b.shape}")
    return a, b


def mse(result: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error over all values, or over the pixels where ``mask`` (the leading dims) is True."""
    a, b = _same_shape(result, reference)
    error = (a - b) ** 2
    if mask is not None:
        mask = np.asarray(mask, bool)
        if not mask.any():
            return math.nan
        error = error[mask]
    return float(error.mean())


def psnr(result: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB (``inf`` when identical, NaN for an empty mask)."""
    error = mse(result, reference, mask)
    if math.isnan(error):
        return math.nan
    return math.inf if error == 0 else 10 * math.log10(peak ** 2 / error)


def ssim(result: np.ndarray, reference: np.ndarray) -> float:
    """Mean structural similarity of two images ``(H, W)`` or ``(H, W, 3)`` (the mean over channels), with an
    11x11 Gaussian window of sigma 1.5."""
    a, b = _same_shape(result, reference)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    values = []
    for c in range(a.shape[-1]):
        x, y = a[..., c], b[..., c]
        blur = lambda z: cv2.GaussianBlur(z, (11, 11), SSIM_SIGMA)  # noqa: E731
        mx, my = blur(x), blur(y)
        vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        s = ((2 * mx * my + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2))
        values.append(s.mean())
    return float(np.mean(values))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two equally long series (NaN when either is constant or shorter than 3)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise InvalidInputError(f"correlation needs two series of one length, got {x.shape} and {y.shape}")
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def flicker(result: np.ndarray, reference: np.ndarray) -> float:
    """Temporal inconsistency against the reference: the mean absolute difference between the frame-to-frame
    changes of the result and those of the reference, ``mean |(r[t] - r[t-1]) - (g[t] - g[t-1])|`` over frames
    ``(F, ...)``. Zero when the result changes exactly as the ground truth does; noise that differs from frame to
    frame raises it even when each frame alone is close."""
    a, b = _same_shape(result, reference)
    if len(a) < 2:
        raise InvalidInputError("flicker needs at least 2 frames")
    return float(np.abs(np.diff(a, axis=0) - np.diff(b, axis=0)).mean())

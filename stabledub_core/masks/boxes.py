"""Square crop boxes around union masks: one fixed box per window, smoothed across windows, clamped to the frame."""

from __future__ import annotations

import math

import numpy as np

from stabledub_core.errors import CropBoxError

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) source pixels, x1 - x0 == y1 - y0


def clamp_box(cx: float, cy: float, side: float, frame_size: tuple[int, int]) -> Box:
    """Integer square box of the given centre and side, moved (and shrunk if needed) to lie inside the frame.

    Args:
        cx: centre x in source pixels.
        cy: centre y.
        side: wanted side in pixels.
        frame_size: (H, W) of the frame.

    Returns:
        (x0, y0, x1, y1) with 0 <= x0 < x1 <= W, 0 <= y0 < y1 <= H and x1 - x0 == y1 - y0.
    """
    height, width = frame_size
    s = int(min(max(1, round(side)), height, width))
    x0 = int(min(max(round(cx - s / 2), 0), width - s))
    y0 = int(min(max(round(cy - s / 2), 0), height - s))
    return x0, y0, x0 + s, y0 + s


def box_around(rect: np.ndarray, scale: float, shift_y: float, min_side: float) -> np.ndarray:
    """Unclamped square (cx, cy, side) around a rectangle.

    Args:
        rect: (4,) (x0, y0, x1, y1) - the region the box must show (Mu with its feather).
        scale: box side / longer side of ``rect``.
        shift_y: centre offset as a fraction of the side (negative: up).
        min_side: lower bound of the side.

    Returns:
        (3,) float64 (cx, cy, side).
    """
    x0, y0, x1, y1 = (float(v) for v in rect)
    side = max(min_side, scale * max(x1 - x0, y1 - y0))
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2 + shift_y * side, side])


def _contain(box: np.ndarray, rect: np.ndarray) -> np.ndarray:
    """Smallest change of (cx, cy, side) so that the square contains ``rect`` (grows the side only if needed)."""
    cx, cy, side = box
    x0, y0, x1, y1 = rect
    side = max(side, x1 - x0, y1 - y0)
    cx = min(max(cx, x1 - side / 2), x0 + side / 2)
    cy = min(max(cy, y1 - side / 2), y0 + side / 2)
    return np.array([cx, cy, side])


def smooth_boxes(
    wanted: np.ndarray,
    rects: np.ndarray,
    smoothing: float,
    frame_size: tuple[int, int],
    previous: Box | None = None,
) -> list[Box]:
    """Smooths per-window boxes so consecutive crops do not jump, then makes each contain its window's region.

    Centre and side are smoothed by a forward and a backward exponential moving average (averaged: no lag), each
    box is then minimally moved/grown to contain its rectangle, and clamped to the frame (a frame smaller than
    the box shrinks it).

    Args:
        wanted: (K, 3) (cx, cy, side) per window, as from :func:`box_around`; NaN rows for windows without a face.
        rects: (K, 4) region each box must contain; NaN rows likewise.
        smoothing: weight of the previous value in the moving average, in [0, 1).
        frame_size: (H, W).
        previous: the box of the window just before these (when a long video is planned in groups of windows):
            the forward (causal) average alone is used, starting from it, so boxes do not jump between groups.

    Returns:
        K integer boxes. Windows without a face take the smoothed box of the nearest window with one (or the
        previous box, or a centred box of the frame's shorter side, when no window has a face).
    """
    wanted = np.asarray(wanted, np.float64)
    valid = np.isfinite(wanted).all(axis=1)
    height, width = frame_size
    anchor = None
    if previous is not None:
        x0, y0, x1, y1 = previous
        anchor = np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0], np.float64)
    if not valid.any():
        fallback = anchor if anchor is not None else np.array([width / 2, height / 2, min(height, width)])
        return [clamp_box(*fallback, frame_size)] * len(wanted)
    index = np.flatnonzero(valid)
    # Windows without a face hold the nearest valid value, so the averages skip them without a jump.
    nearest = index[np.abs(np.arange(len(wanted))[:, None] - index[None, :]).argmin(axis=1)]
    filled = wanted[nearest]
    forward = filled.copy()
    backward = filled.copy()
    if anchor is not None:
        forward[0] = smoothing * anchor + (1 - smoothing) * filled[0]
    for k in range(1, len(filled)):
        forward[k] = smoothing * forward[k - 1] + (1 - smoothing) * filled[k]
        backward[-k - 1] = smoothing * backward[-k] + (1 - smoothing) * filled[-k - 1]
    # Zero-phase (forward + backward) for a whole clip; causal when continuing from a previous group's box.
    smoothed = forward if anchor is not None else (forward + backward) / 2
    boxes = []
    for k in range(len(filled)):
        box = _contain(smoothed[k], np.asarray(rects[nearest[k]], np.float64))
        boxes.append(clamp_box(*box, frame_size))
    return boxes


def box_scale(box: Box, crop_size: int) -> float:
    """Crop pixels per source pixel for a box resampled to ``crop_size``."""
    side = box[2] - box[0]
    if side <= 0 or not math.isfinite(side):
        raise CropBoxError(f"invalid crop box {box}: expected (x0, y0, x1, y1) with x1 > x0")
    return crop_size / side

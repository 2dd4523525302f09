"""Cropping frames to model resolution and compositing generated crops back into the source frames.

Only the crop box is ever touched, and inside it only the pixels where the feathered union mask is positive: every
other pixel of the output is bit-identical to the input. Generated crops may come back at any size (e.g. 2x or 4x
after an upscaler or a face restorer); they are resampled to the box.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

if TYPE_CHECKING:
    from ..masks.union import Window

Box = tuple[int, int, int, int]


class CompositeError(ValueError):
    """Raised for frames, crops, boxes or masks whose shapes do not fit together."""


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes a square (s, s[, C]) image to (size, size[, C]): INTER_AREA to shrink, bicubic to enlarge."""
    source = image.shape[0]
    if source == size and image.shape[1] == size:
        return image
    interpolation = cv2.INTER_AREA if size < source else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interpolation)


def shrink_square(image: np.ndarray, size: int) -> np.ndarray:
    """Fast antialiased shrinking of a square image, for pasting model-resolution (or upscaled) crops.

    OpenCV's INTER_AREA is slow for non-integer ratios (about 2 ms for 512 -> 243 px), so the image is first
    reduced by the integer factor ``k = round(ratio / 2)`` with INTER_AREA (box filter, fast path) and the
    remaining ratio, at most about 3, is done bilinearly. At ratios up to ~2.5 (a 512 crop pasted into a box of
    205 px or more) this is a single bilinear step, which also inverts :func:`resize_square`'s bicubic enlargement
    more closely than a box filter does.

    Args:
        image: (s, s[, C]) uint8 or float32.
        size: target side, at most s.

    Returns:
        (size, size[, C]) of the same dtype.
    """
    source = image.shape[0]
    if source == size:
        return image
    if size > source:
        return resize_square(image, size)
    factor = int(round(source / size / 2))
    if factor > 1:
        reduced = -(-source // factor)
        image = cv2.resize(image, (reduced, reduced), interpolation=cv2.INTER_AREA)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise CompositeError(f"expected frames (n, H, W, 3) uint8 RGB, got {frames.shape} {frames.dtype}")


def _check_box(box: Box, frame_size: tuple[int, int]) -> None:
    x0, y0, x1, y1 = box
    height, width = frame_size
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height and x1 - x0 == y1 - y0):
        raise CompositeError(f"crop box {box} is not a square inside the {width}x{height} frame: plan it with "
                             "stabledub_core.masks.union.plan_windows")


def crop_frames(frames: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Crops the box out of each frame and resamples it to the model resolution.

    Args:
        frames: (n, H, W, 3) uint8.
        box: (x0, y0, x1, y1) square box inside the frame.
        size: output side S.

    Returns:
        (n, S, S, 3) uint8.
    """
    frames = np.asarray(frames)
    _check_frames(frames)
    _check_box(box, frames.shape[1:3])
    x0, y0, x1, y1 = box
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, frame in enumerate(frames):
        out[i] = resize_square(frame[y0:y1, x0:x1], size)
    return out


def _mask_support(mask: np.ndarray) -> tuple[slice, slice] | None:
    """Row and column slices of the bounding box of ``mask > 0``; None when the mask is empty."""
    rows = np.flatnonzero(mask.max(axis=1) > 0)
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(mask.max(axis=0) > 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def paste_back(
    frames: np.ndarray,
    crops: np.ndarray,
    box: Box,
    union_mask: np.ndarray,
    active: Sequence[bool] | np.ndarray | None = None,
    color_match: bool = False,
    inplace: bool = False,
) -> np.ndarray:
    """Blends generated crops into the frames inside the box with the feathered union mask.

    Args:
        frames: (n, H, W, 3) uint8 source frames.
        crops: (n, s, s, 3) uint8 generated crops of any size s (resampled to the box).
        box: (x0, y0, x1, y1) the crops' square box.
        union_mask: (S, S) float in [0, 1], Mu in crop coordinates at any size S (1: take the crop).
        active: optional (n,) bool; frames with False are returned unchanged (e.g. MISSING faces).
        color_match: match the generated region's Lab mean and std to the source over a ring just outside the
            mask (see :func:`match_colors`).
        inplace: write into ``frames`` instead of a copy.

    Returns:
        (n, H, W, 3) uint8; pixels where the resampled mask is 0 equal the input's bit for bit.
    """
    frames = np.asarray(frames)
    crops = np.asarray(crops)
    _check_frames(frames)
    _check_box(box, frames.shape[1:3])
    if crops.ndim != 4 or crops.shape[0] != frames.shape[0] or crops.shape[1] != crops.shape[2] \
            or crops.shape[-1] != 3 or crops.dtype != np.uint8:
        raise CompositeError(f"expected crops (n, s, s, 3) uint8 for {frames.shape[0]} frames, got "
                             f"{crops.shape} {crops.dtype}")
    union_mask = np.asarray(union_mask, np.float32)
    if union_mask.ndim != 2 or union_mask.shape[0] != union_mask.shape[1]:
        raise CompositeError(f"expected a square (S, S) union mask, got {union_mask.shape}")
    active = np.ones(len(frames), bool) if active is None else np.asarray(active, bool)
    if active.shape != (len(frames),):
        raise CompositeError(f"active must have shape ({len(frames)},), got {active.shape}")

    out = frames if inplace else frames.copy()
    x0, y0, x1, y1 = box
    side = x1 - x0
    mask = np.clip(shrink_square(union_mask, side), 0, 1)  # (side, side)
    support = _mask_support(mask)
    if support is None or not active.any():
        return out
    rows, cols = support
    weight = np.ascontiguousarray(mask[rows, cols])
    inverse = 1 - weight
    ring = _ring(mask, support) if color_match else None
    for i in np.flatnonzero(active):
        generated = shrink_square(crops[i], side)
        region = out[i, y0:y1, x0:x1]
        if ring is not None:
            generated = match_colors(generated, region, ring)
        target = region[rows, cols]
        # blendLinear computes round(a * w_a + b * w_b): where weight is 0 it returns the source byte exactly.
        region[rows, cols] = cv2.blendLinear(np.ascontiguousarray(generated[rows, cols]),
                                             np.ascontiguousarray(target), weight, inverse)
    return out


def paste_windows(frames: np.ndarray, crops: np.ndarray, windows: Sequence["Window"], start: int = 0,
                  color_match: bool = False, inplace: bool = False) -> np.ndarray:
    """Pastes crops of consecutive frames back, each frame with the window that owns it.

    Args:
        frames: (n, H, W, 3) uint8 frames ``start .. start + n`` of the clip.
        crops: (n, s, s, 3) uint8 generated crops of the same frames.
        windows: the clip's windows from ``plan_windows``.
        start: clip index of ``frames[0]``.
        color_match: see :func:`paste_back`.
        inplace: write into ``frames``.

    Returns:
        (n, H, W, 3) uint8; frames of pass-through windows and MISSING frames are unchanged.
    """
    out = frames if inplace else np.array(frames, copy=True)
    stop = start + len(frames)
    for window in windows:
        lo, hi = max(window.own_start, start), min(window.own_stop, stop)
        if lo >= hi or window.passthrough:
            continue
        active = window.active[lo - window.start:hi - window.start]
        paste_back(out[lo - start:hi - start], crops[lo - start:hi - start], window.box, window.union_mask,
                   active=active, color_match=color_match, inplace=True)
    return out


def _ring(mask: np.ndarray, support: tuple[slice, slice], width: float = 0.08) -> np.ndarray | None:
    """Boolean ring just outside the mask's support inside the box, ``width`` of the box side wide."""
    side = mask.shape[0]
    grow = max(2, int(round(width * side)))
    outside = mask <= 0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    near = cv2.dilate((~outside).astype(np.uint8), kernel) > 0
    ring = near & outside
    return ring if ring.sum() >= 16 else None


def match_colors(generated: np.ndarray, source: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Shifts the generated box's colours so its Lab mean/std over ``ring`` match the source's there.

    Args:
        generated: (h, w, 3) uint8 generated box content (at box size).
        source: (h, w, 3) uint8 source box content.
        ring: (h, w) bool pixels outside the mask used to compare the two (present in both).

    Returns:
        (h, w, 3) uint8 colour-corrected generated content.
    """
    gen_lab = cv2.cvtColor(generated, cv2.COLOR_RGB2LAB).astype(np.float32)
    src_lab = cv2.cvtColor(source, cv2.COLOR_RGB2LAB).astype(np.float32)
    gen_ring, src_ring = gen_lab[ring], src_lab[ring]  # (m, 3)
    gen_mean, gen_std = gen_ring.mean(axis=0), gen_ring.std(axis=0) + 1e-3
    src_mean, src_std = src_ring.mean(axis=0), src_ring.std(axis=0) + 1e-3
    gain = np.clip(src_std / gen_std, 0.5, 2.0)
    corrected = (gen_lab - gen_mean) * gain + src_mean
    return cv2.cvtColor(np.clip(np.rint(corrected), 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)

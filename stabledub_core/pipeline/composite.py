"""Cropping frames to model resolution and compositing generated crops back into the source frames.

Only the crop box is ever touched, and inside it only the pixels where the feathered union mask is positive: every
other pixel of the output is bit-identical to the input. Generated crops may come back at any size (e.g. 2x or 4x
after an upscaler or a face restorer); they are resampled to the box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from stabledub_core.errors import CompositeError


Box = tuple[int, int, int, int]


def resize_square(image: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Resizes a square (s, s[, C]) image to (size, size[, C]): INTER_AREA to shrink, bicubic to enlarge.

    Args:
        image: the square image.
        size: output side.
        out: optional contiguous output array of the result's shape, written in place.

    Returns:
        The resized image (``out`` when given; ``image`` itself when no resize is needed and no ``out``).
    """
    source = image.shape[0]
    if source == size and image.shape[1] == size:
        if out is None:
            return image
        out[...] = image
        return out
    interpolation = cv2.INTER_AREA if size < source else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), dst=out, interpolation=interpolation)


def shrink_square(image: np.ndarray, size: int, interpolation: int = cv2.INTER_CUBIC) -> np.ndarray:
    """Fast shrinking of a square image, for pasting model-resolution (or upscaled) crops back into their box.

    The image is first reduced by the integer factor ``k = round(ratio / 2)`` with INTER_AREA (a box filter;
    OpenCV's fast path for integer ratios), and the remaining ratio, at most about 3, is done bicubically. A
    model-resolution crop of a box of 205 px or more (ratio <= 2.5) thus takes a single bicubic step: the generated
    crops have the spectrum of bicubically enlarged source boxes (that is how training crops are made, see
    :func:`resize_square`), so bicubic resampling at the source pixels' positions inverts the enlargement (about
    55 dB on the test video, vs 45 dB for INTER_AREA, which is also ~10x slower at non-integer ratios). Crops
    enlarged 2x or 4x by an upscaler or face restorer are box-filtered back to about model resolution first.

    Args:
        image: (s, s[, C]) uint8 or float32.
        size: target side, at most s (larger sizes are delegated to :func:`resize_square`).
        interpolation: the final step's OpenCV interpolation (bilinear for masks: no ringing).

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
    return cv2.resize(image, (size, size), interpolation=interpolation)


def mask_to_box(union_mask: np.ndarray, side: int) -> np.ndarray:
    """Resamples a crop-coordinate (S, S) mask to a box of ``side`` pixels: the paste-back weight.

    Shrinks with :func:`shrink_square` ending bilinearly and enlarges bilinearly (monotone: no ringing outside the
    mask); clipped to [0, 1].
    """
    union_mask = np.asarray(union_mask, np.float32)
    if side <= union_mask.shape[0]:
        resized = shrink_square(union_mask, side, cv2.INTER_LINEAR)
    else:
        resized = cv2.resize(union_mask, (side, side), interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0, 1)


@dataclass(frozen=True)
class PasteWeight:
    """A union mask resampled to its box, prepared once per crop span and reused for each of its frames.

    Attributes:
        mask: (side, side) float32 weight of the generated pixels in the box.
        rows: rows of the box where the weight is positive somewhere (its bounding box), or None if empty.
        cols: the matching columns.
    """

    mask: np.ndarray
    rows: slice | None
    cols: slice | None

    @classmethod
    def prepare(cls, union_mask: np.ndarray, side: int) -> "PasteWeight":
        """From an (S, S) union mask in crop coordinates and the box side."""
        union_mask = np.asarray(union_mask, np.float32)
        if union_mask.ndim != 2 or union_mask.shape[0] != union_mask.shape[1]:
            raise CompositeError(f"expected a square (S, S) union mask, got {union_mask.shape}")
        mask = mask_to_box(union_mask, side)
        rows = np.flatnonzero(mask.max(axis=1) > 0)
        if len(rows) == 0:
            return cls(mask, None, None)
        cols = np.flatnonzero(mask.max(axis=0) > 0)
        return cls(mask, slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))

    @property
    def side(self) -> int:
        return self.mask.shape[0]

    @property
    def empty(self) -> bool:
        return self.rows is None


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise CompositeError(f"expected frames (n, H, W, 3) uint8 RGB, got {frames.shape} {frames.dtype}")


def _check_box(box: Box, frame_size: tuple[int, int]) -> None:
    x0, y0, x1, y1 = box
    height, width = frame_size
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height and x1 - x0 == y1 - y0):
        raise CompositeError(f"crop box {box} is not a square inside the {width}x{height} frame: plan it with "
                             "stabledub_core.masks.crop_spans.plan_crop_spans")


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
        resize_square(frame[y0:y1, x0:x1], size, out=out[i])
    return out


def paste_back(
    frames: np.ndarray,
    crops: np.ndarray,
    box: Box,
    union_mask: np.ndarray | PasteWeight,
    active: Sequence[bool] | np.ndarray | None = None,
    color_match: bool = False,
    inplace: bool = False,
) -> np.ndarray:
    """Blends generated crops into the frames inside the box with the feathered union mask.

    Args:
        frames: (n, H, W, 3) uint8 source frames.
        crops: (n, s, s, 3) uint8 generated crops of any size s (resampled to the box).
        box: (x0, y0, x1, y1) the crops' square box.
        union_mask: (S, S) float in [0, 1], Mu in crop coordinates at any size S (1: take the crop), or a
            :class:`PasteWeight` prepared once for the box (saves resampling the mask for every frame).
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
    x0, y0, x1, y1 = box
    side = x1 - x0
    weight = union_mask if isinstance(union_mask, PasteWeight) else PasteWeight.prepare(union_mask, side)
    if weight.side != side:
        raise CompositeError(f"paste weight was prepared for a {weight.side}-pixel box, the box {box} is {side}")
    active = np.ones(len(frames), bool) if active is None else np.asarray(active, bool)
    if active.shape != (len(frames),):
        raise CompositeError(f"active must have shape ({len(frames)},), got {active.shape}")

    out = frames if inplace else frames.copy()
    if weight.empty or not active.any():
        return out
    rows, cols = weight.rows, weight.cols
    inside = np.ascontiguousarray(weight.mask[rows, cols])  # (h, w)
    inverse = 1 - inside
    ring = _ring(weight.mask) if color_match else None
    for i in np.flatnonzero(active):
        generated = shrink_square(crops[i], side)
        region = out[i, y0:y1, x0:x1]
        if ring is not None:
            generated = match_colors(generated, region, ring)
        target = region[rows, cols]
        # blendLinear computes round(a * w_a + b * w_b): where weight is 0 it returns the source byte exactly.
        region[rows, cols] = cv2.blendLinear(np.ascontiguousarray(generated[rows, cols]),
                                             np.ascontiguousarray(target), inside, inverse)
    return out


def _ring(mask: np.ndarray, width: float = 0.08) -> np.ndarray | None:
    """Boolean ring just outside the mask inside the box, ``width`` of the box side wide (None if too small)."""
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

"""Windows of frames sharing one crop box and one feathered union mask Mu (paper Sec. III-C).

Mu unions the horizontal and vertical extents of the window's coarse masks Mc - a rectangle spanning their min..max
extents - and blurs its boundary outwards, so it only marks the approximate mouth position and removes the
audio-related jaw motion from the mask. The crop box is a fixed square, much larger than Mu, so the network sees a
continuous signal across the window; boxes are smoothed across windows so crops do not jump between windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from stabledub_core.errors import WindowPlanError
from stabledub_core.face.track import FaceTrack, TrackStatus
from stabledub_core.masks import mouth_masks
from stabledub_core.masks.boxes import Box, box_around, box_scale, smooth_boxes
from stabledub_core.masks.config import MaskConfig


@dataclass(eq=False)
class Window:
    """One window of frames sharing a crop box and a union mask.

    Attributes:
        start: first frame of the window.
        stop: one past its last frame.
        box: (x0, y0, x1, y1) square crop box in source pixels, clamped to the frame.
        union_mask: (S, S) float32 in [0, 1]: feathered Mu in crop coordinates at crop size S.
        active: (n,) bool, frames with a tracked face (status not MISSING); inactive frames pass through unchanged.
        union_rect: (x0, y0, x1, y1) float, Mu's hard rectangle in source pixels (NaN for a pass-through window).
        feather: width of Mu's soft edge outside ``union_rect``, in source pixels.
        own_start: first frame this window writes when windows overlap (the overlap is split at its middle).
        own_stop: one past the last frame it writes.
        landmarks: (n, 478, 2) float32 the window's landmarks in crop coordinates (NaN for frames without a face).
        coarse_dilation: Mc's widening as a fraction of the face width.

    ``coarse_masks`` ((n, S, S) float32 Mc per frame in crop coordinates, zeros for frames without a face; for the
    latent coarse facial loss) is drawn on first access, so inference, which does not need it, never pays for it.
    """

    start: int
    stop: int
    box: Box
    union_mask: np.ndarray
    active: np.ndarray
    union_rect: tuple[float, float, float, float]
    feather: float
    own_start: int
    own_stop: int
    landmarks: np.ndarray = field(repr=False)
    coarse_dilation: float = 0.0

    @property
    def passthrough(self) -> bool:
        """True when no frame of the window has a face: its frames are returned unchanged."""
        return not bool(self.active.any())

    @cached_property
    def coarse_masks(self) -> np.ndarray:
        size = self.crop_size
        raster = np.zeros((size, size), np.uint8)
        out = np.zeros((len(self.active), size, size), np.float32)  # (n, S, S)
        for i in np.flatnonzero(self.active):
            mouth_masks.rasterize(self.landmarks[i], (size, size), dilation=self.coarse_dilation, out=raster)
            out[i] = raster
        return out

    @property
    def crop_size(self) -> int:
        return int(self.union_mask.shape[-1])

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Maps (..., 2) source pixel (x, y) into this window's crop coordinates."""
        x0, y0 = self.box[:2]
        return (np.asarray(points, np.float32) - np.array([x0, y0], np.float32)) * box_scale(self.box, self.crop_size)


def feathered_rect(rect: np.ndarray, feather: float, size: int) -> np.ndarray:
    """A rectangle that is 1 inside and falls to 0 with a cosine ramp over ``feather`` pixels outside.

    The ramp follows the distance to the rectangle, so the outer corners are rounded.

    Args:
        rect: (x0, y0, x1, y1) in raster pixels (pixel i covers [i, i + 1)).
        feather: ramp width in raster pixels (0: a hard edge).
        size: side S of the square raster.

    Returns:
        (S, S) float32.
    """
    x0, y0, x1, y1 = (float(v) for v in rect)
    feather = max(float(feather), 0.0)
    out = np.zeros((size, size), np.float32)
    # Only the rows and columns within reach of the rectangle are evaluated.
    c0, r0 = (max(0, int(np.floor(v - feather - 0.5))) for v in (x0, y0))
    c1, r1 = (min(size, int(np.ceil(v + feather + 0.5))) for v in (x1, y1))
    if c0 >= c1 or r0 >= r1:
        return out
    xs = np.arange(c0, c1, dtype=np.float32) + 0.5
    ys = np.arange(r0, r1, dtype=np.float32) + 0.5
    dx = np.maximum(np.maximum(x0 - xs, xs - x1), 0)  # (w,)
    dy = np.maximum(np.maximum(y0 - ys, ys - y1), 0)  # (h,)
    distance = np.sqrt(dx[None, :] ** 2 + dy[:, None] ** 2)  # (h, w)
    if feather == 0:
        out[r0:r1, c0:c1] = distance <= 0
        return out
    ramp = np.minimum(distance * np.float32(np.pi / feather), np.float32(np.pi))
    out[r0:r1, c0:c1] = 0.5 + 0.5 * np.cos(ramp)
    return out


def _window_ranges(num_frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    stride = window - overlap
    ranges = []
    for start in range(0, num_frames, stride):
        stop = min(start + window, num_frames)
        ranges.append((start, stop))
        if stop == num_frames:
            break
    return ranges


def _union_rect(extents: np.ndarray, feather: float) -> tuple[np.ndarray, float]:
    """Mu's hard rectangle over (n, 4) coarse-mask extents and its feather width in pixels (NaN, 0 if n = 0)."""
    if len(extents) == 0:
        return np.full(4, np.nan), 0.0
    rect = np.array([*extents[:, :2].min(axis=0), *extents[:, 2:].max(axis=0)], np.float64)
    return rect, feather * float(max(rect[2] - rect[0], rect[3] - rect[1]))


def plan_windows(
    track: FaceTrack,
    window: int = 16,
    overlap: int = 0,
    crop_size: int = 512,
    config: MaskConfig | None = None,
    previous_box: Box | None = None,
) -> list[Window]:
    """Splits a track into windows and computes each window's crop box, Mu and per-frame Mc.

    MISSING frames are left out of the unions; a window with no tracked frame is a pass-through window (its
    masks are all zero and its box follows its neighbours').

    Args:
        track: the face track of the whole clip.
        window: frames per window.
        overlap: frames shared by consecutive windows (0: the windows partition the clip).
        crop_size: side S of the model-resolution crops.
        config: mask geometry; defaults to ``MaskConfig()``.
        previous_box: when a long video is planned in groups of windows, the box of the last window of the
            previous group: smoothing continues from it so crops do not jump between groups.

    Returns:
        The windows in frame order; their frame indices count from the track's first frame (for a streamed
        chunk, add ``track.start`` for video indices).
    """
    config = config or MaskConfig()
    if window < 1 or not 0 <= overlap < window:
        raise WindowPlanError(f"need window >= 1 and 0 <= overlap < window, got window={window}, overlap={overlap}")
    if crop_size < 8:
        raise WindowPlanError(f"crop_size must be at least 8 pixels, got {crop_size}")
    status = np.asarray(track.status)
    landmarks = np.asarray(track.landmarks, np.float32)
    if landmarks.shape[0] != status.shape[0]:
        raise WindowPlanError(f"track has {landmarks.shape[0]} landmark frames but {status.shape[0]} statuses")
    if status.shape[0] == 0:
        raise WindowPlanError("the track has no frames")
    active = (status != TrackStatus.MISSING) & np.isfinite(landmarks).all(axis=(1, 2))  # (F,)
    extents = mouth_masks.coarse_extents(landmarks, config.coarse_dilation)  # (F, 4)
    ranges = _window_ranges(len(status), window, overlap)

    rects, feathers, reaches = [], [], []
    for start, stop in ranges:
        rect, feather = _union_rect(extents[start:stop][active[start:stop]], config.feather)
        rects.append(rect)
        feathers.append(feather)
        reaches.append(rect + np.array([-feather, -feather, feather, feather]))  # Mu with its soft edge
    wanted = [box_around(reach, config.box_scale, config.box_shift_y, config.min_box)
              if np.isfinite(reach).all() else np.full(3, np.nan) for reach in reaches]
    boxes = smooth_boxes(np.array(wanted), np.array(reaches), config.box_smoothing, track.frame_size,
                         previous=previous_box)

    windows = []
    for k, ((start, stop), box, rect, feather) in enumerate(zip(ranges, boxes, rects, feathers)):
        scale = box_scale(box, crop_size)
        window_active = active[start:stop].copy()
        if window_active.any():
            offset = np.array([box[0], box[1], box[0], box[1]], np.float64)
            union = feathered_rect((rect - offset) * scale, feather * scale, crop_size)
        else:
            union = np.zeros((crop_size, crop_size), np.float32)
        crop_landmarks = (landmarks[start:stop] - np.array(box[:2], np.float32)) * np.float32(scale)
        crop_landmarks[~window_active] = np.nan
        own_start = 0 if k == 0 else (start + ranges[k - 1][1]) // 2
        own_stop = len(status) if k == len(ranges) - 1 else (ranges[k + 1][0] + stop) // 2
        windows.append(Window(start=start, stop=stop, box=box, union_mask=union,
                              active=window_active, union_rect=tuple(float(v) for v in rect),
                              feather=float(feather), own_start=own_start, own_stop=own_stop,
                              landmarks=crop_landmarks, coarse_dilation=config.coarse_dilation))
    return windows


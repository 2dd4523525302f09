"""Per-frame mouth masks from face landmarks: the detailed mask and the coarse mask Mc (paper Sec. III-C, Fig. 4).

The *detailed* mask is the polygon over the lips, jaw and lower cheeks (:data:`regions.LOWER_FACE_POLYGON`, with the
outer lip contour filled as well). The paper obtains the *coarse* mask Mc by "eroding" the detailed mask "to eliminate
the mouth estimation inaccuracy"; read as morphology on the *masked* (inpainted) region that would shrink it and make it
less tolerant of landmark error, so - like the masks drawn in the paper's Fig. 4, which are visibly larger than the
detailed one - this module *widens* the detailed mask: Mc is the detailed polygon dilated by a disk whose radius is a
fraction of the face width (equivalently, the unmasked region is eroded). Jitter of the landmarks by less than that
radius never uncovers mouth pixels.

Everything here works from landmark geometry: extents are computed from the polygon points (no raster), and rasters
are drawn with ``cv2.fillPoly``/``cv2.polylines`` directly at the requested size (crop or frame), so no full-resolution
float mask is built unless asked for.
"""

from __future__ import annotations

import cv2
import numpy as np

from stabledub_core.errors import LandmarkShapeError
from stabledub_core.masks import regions

_SHIFT = 4  # fixed-point bits for sub-pixel polygon rasterisation
_ONE = 1 << _SHIFT


def _check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    landmarks = np.asarray(landmarks, dtype=np.float32)
    if landmarks.ndim < 2 or landmarks.shape[-2:] != (regions.NUM_LANDMARKS, 2):
        raise LandmarkShapeError(
            f"expected landmarks of shape (..., {regions.NUM_LANDMARKS}, 2) in pixel (x, y) from the MediaPipe Face "
            f"Landmarker, got {landmarks.shape}")
    return landmarks


def face_width(landmarks: np.ndarray) -> np.ndarray:
    """Cheek-to-cheek distance in pixels, the scale that mask margins are relative to.

    Args:
        landmarks: (..., 478, 2) pixel coordinates.

    Returns:
        (...,) float32 widths (NaN where the landmarks are NaN).
    """
    landmarks = _check_landmarks(landmarks)
    a, b = regions.FACE_WIDTH_PAIR
    return np.linalg.norm(landmarks[..., a, :] - landmarks[..., b, :], axis=-1)


def detailed_polygon(landmarks: np.ndarray) -> np.ndarray:
    """Vertices of the detailed mask polygon (lower face oval closed by the nose base).

    Args:
        landmarks: (..., 478, 2).

    Returns:
        (..., P, 2) float32 polygon vertices.
    """
    return _check_landmarks(landmarks)[..., list(regions.LOWER_FACE_POLYGON), :]


def coarse_radius(landmarks: np.ndarray, dilation: float) -> np.ndarray:
    """Radius in pixels by which Mc widens the detailed mask: ``dilation`` times the face width."""
    return dilation * face_width(landmarks)


def coarse_extents(landmarks: np.ndarray, dilation: float) -> np.ndarray:
    """Bounding boxes of the coarse masks, computed from the polygon vertices without rasterising.

    Args:
        landmarks: (F, 478, 2).
        dilation: Mc's widening radius as a fraction of the face width.

    Returns:
        (F, 4) float32 (x0, y0, x1, y1) in the landmarks' pixel coordinates; NaN rows where landmarks are NaN.
    """
    landmarks = _check_landmarks(landmarks)
    points = np.concatenate([detailed_polygon(landmarks), landmarks[..., list(regions.LIPS_OUTER), :]], axis=-2)
    radius = coarse_radius(landmarks, dilation)[..., None]  # (F, 1)
    low = points.min(axis=-2) - radius  # (F, 2)
    high = points.max(axis=-2) + radius
    return np.concatenate([low, high], axis=-1)


def face_anchor(landmarks: np.ndarray) -> np.ndarray:
    """A point that follows the head but not the jaw: the mean of :data:`regions.RIGID_ANCHOR`.

    Args:
        landmarks: (..., 478, 2) pixel coordinates.

    Returns:
        (..., 2) float32 (x, y) (NaN where the landmarks are NaN).
    """
    return _check_landmarks(landmarks)[..., list(regions.RIGID_ANCHOR), :].mean(axis=-2)


def _to_fixed(points: np.ndarray, offset: np.ndarray, scale: float) -> np.ndarray:
    return np.round((points - offset) * scale * _ONE).astype(np.int32)


def rasterize(
    landmarks: np.ndarray,
    size: tuple[int, int],
    offset: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
    dilation: float = 0.0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Draws one frame's detailed (``dilation == 0``) or coarse (``dilation > 0``) mask.

    The landmarks are mapped as ``(p - offset) * scale``; pass a crop box's top-left corner and ``crop_size / side``
    to draw the mask in crop coordinates.

    Args:
        landmarks: (478, 2) pixel coordinates of one frame.
        size: (H, W) of the raster.
        offset: (x, y) subtracted from the landmarks.
        scale: factor applied after the offset.
        dilation: Mc's widening radius as a fraction of the face width (0: the detailed mask).
        out: optional (H, W) uint8 array to draw into (it is cleared first).

    Returns:
        (H, W) uint8 mask with 1 inside.
    """
    landmarks = _check_landmarks(landmarks)
    if landmarks.ndim != 2:
        raise LandmarkShapeError(f"rasterize draws one frame: expected (478, 2) landmarks, got {landmarks.shape}")
    if out is None:
        out = np.zeros(size, np.uint8)
    else:
        out[...] = 0
    if not np.isfinite(landmarks).all():
        return out
    origin = np.asarray(offset, np.float32)
    polygons = [_to_fixed(detailed_polygon(landmarks), origin, scale),
                _to_fixed(landmarks[list(regions.LIPS_OUTER), :], origin, scale)]
    for polygon in polygons:  # one call each: fillPoly fills overlapping polygons by parity (lips would be holes)
        cv2.fillPoly(out, [polygon], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    radius = float(coarse_radius(landmarks, dilation)) * scale
    if radius >= 0.5:
        # A closed polyline of thickness 2r has round joins: together with the fill it is the polygon dilated by a
        # disk of radius r (Minkowski sum), at the cost of drawing one outline.
        cv2.polylines(out, polygons[:1], True, 1, thickness=int(round(2 * radius)), lineType=cv2.LINE_8,
                      shift=_SHIFT)
    return out

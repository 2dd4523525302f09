"""Preview images of the masks: landmarks, detailed and coarse masks, union mask, crop box and exposed patches.

Each frame is shown around its span's crop box (with a margin, so the box itself is visible) at ``tile`` pixels:

* Mu: blue tint, proportional to the feathered union mask,
* exposed patches: yellow (as in the paper's Fig. 4),
* Mc: green outline; detailed mask: cyan outline; the landmarks these are built from: red dots,
* crop box: magenta square; the label gives the frame index and span.

The command line that writes such a strip for a video is ``python -m stabledub_core preview``
(``stabledub_core/cli/preview.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import cv2
import numpy as np

from stabledub_core.masks import exposure as exposure_lib
from stabledub_core.masks import mouth_masks, regions
from stabledub_core.masks.boxes import box_scale, clamp_box
from stabledub_core.masks.crop_spans import CropSpan


@dataclass
class PreviewStyle:
    """Colours (RGB) and sizes of the preview overlays."""

    tile: int = 256
    margin: float = 0.2  # view = crop box grown by this fraction of its side on each side
    union: tuple[int, int, int] = (40, 110, 255)
    union_alpha: float = 0.35
    patches: tuple[int, int, int] = (255, 220, 0)
    patches_alpha: float = 0.6
    coarse: tuple[int, int, int] = (0, 230, 0)
    detailed: tuple[int, int, int] = (0, 230, 230)
    landmarks: tuple[int, int, int] = (255, 40, 40)
    box: tuple[int, int, int] = (255, 0, 255)
    text: tuple[int, int, int] = (255, 255, 255)


def span_of(spans: Sequence[CropSpan], index: int) -> CropSpan:
    """The span that owns clip frame ``index``."""
    for span in spans:
        if span.own_start <= index < span.own_stop:
            return span
    raise IndexError(f"frame {index} is outside the planned spans (0..{spans[-1].own_stop - 1})")


def _tint(image: np.ndarray, weight: np.ndarray, colour: tuple[int, int, int], alpha: float) -> None:
    """Blends ``colour`` into ``image`` in place with per-pixel weight ``alpha * weight``."""
    w = (alpha * weight)[..., None]  # (h, w, 1)
    image[...] = np.rint(image * (1 - w) + np.asarray(colour, np.float32) * w).astype(np.uint8)


def render_frame(
    frame: np.ndarray,
    index: int,
    span: CropSpan,
    patches: exposure_lib.ExposedPatches | None = None,
    style: PreviewStyle | None = None,
) -> np.ndarray:
    """Draws one frame's masks, box and patches around its crop box.

    Args:
        frame: (H, W, 3) uint8 RGB source frame.
        index: the frame's clip index (within ``span``).
        span: the span owning the frame.
        patches: exposed patches to show, or None.
        style: colours and sizes.

    Returns:
        (tile, tile, 3) uint8 RGB.
    """
    style = style or PreviewStyle()
    tile = style.tile
    x0, y0, x1, y1 = span.box
    side = x1 - x0
    view = clamp_box((x0 + x1) / 2, (y0 + y1) / 2, side * (1 + 2 * style.margin), frame.shape[:2])
    t = tile / (view[2] - view[0])  # tile pixels per source pixel
    image = cv2.resize(frame[view[1]:view[3], view[0]:view[2]], (tile, tile), interpolation=cv2.INTER_AREA)
    image = np.ascontiguousarray(image)
    # Crop coordinates -> tile coordinates: p * a + b.
    a = t / box_scale(span.box, span.crop_size)
    b = np.array([(x0 - view[0]) * t, (y0 - view[1]) * t], np.float32)
    to_tile = np.array([[a, 0, b[0]], [0, a, b[1]]], np.float32)

    def warp(crop_raster: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(crop_raster.astype(np.float32), to_tile, (tile, tile), flags=cv2.INTER_LINEAR)

    local = index - span.start
    _tint(image, warp(span.mask_at(local)), style.union, style.union_alpha)  # the frame's own Mu when capped
    if patches is not None and patches.cells:
        _tint(image, warp(patches.raster(span.crop_size)), style.patches, style.patches_alpha)
    landmarks = span.landmarks[local] * a + b if span.active[local] else None  # (478, 2) tile coordinates
    if landmarks is not None:
        coarse = mouth_masks.rasterize(landmarks, (tile, tile), dilation=span.coarse_dilation)
        contours, _ = cv2.findContours(coarse, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(image, contours, -1, style.coarse, 1, cv2.LINE_AA)
        for indices in (regions.LOWER_FACE_POLYGON, regions.LIPS_OUTER):
            cv2.polylines(image, [np.round(landmarks[list(indices)] * 16).astype(np.int32)], True, style.detailed,
                          1, cv2.LINE_AA, shift=4)
        used = np.unique(np.concatenate([regions.LOWER_FACE_POLYGON, regions.LIPS_OUTER, regions.LIPS_INNER]))
        for x, y in np.round(landmarks[used] * 16).astype(int):
            cv2.circle(image, (int(x), int(y)), 24, style.landmarks, -1, cv2.LINE_AA, shift=4)
    bx0, by0 = np.round(b).astype(int)
    bside = int(round(side * t))
    cv2.rectangle(image, (bx0, by0), (bx0 + bside - 1, by0 + bside - 1), style.box, 1)
    label = f"f{index} w{span.start}-{span.stop - 1}" + ("" if span.active[local] else " no face")
    cv2.putText(image, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, style.text, 1, cv2.LINE_AA)
    return image


def preview_strip(
    frames: np.ndarray,
    spans: Sequence[CropSpan],
    indices: Sequence[int],
    patches: Mapping[int, exposure_lib.ExposedPatches] | None = None,
    style: PreviewStyle | None = None,
) -> np.ndarray:
    """A horizontal strip of :func:`render_frame` tiles.

    Args:
        frames: (F, H, W, 3) uint8 clip frames (indexed by clip frame).
        spans: the clip's spans.
        indices: clip frames to show.
        patches: exposed patches per clip frame (missing keys: none).
        style: colours and sizes.

    Returns:
        (tile, len(indices) * tile, 3) uint8 RGB.
    """
    patches = patches or {}
    tiles = [render_frame(frames[i], i, span_of(spans, i), patches.get(i), style) for i in indices]
    return np.concatenate(tiles, axis=1)

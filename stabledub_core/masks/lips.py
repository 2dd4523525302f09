"""Mouth-centred lip crops for the lip-habit encoder, and the choice of the habit segment.

Crops are squares of a fixed pixel size whose side in the source frame is a fixed multiple of a face measure (the
inter-ocular distance by default, which does not change with speech; or the mouth width), so the lips appear at the
same scale whatever the face size. Optionally the crop is rotated so that the mouth-corner line is horizontal.
"""

from __future__ import annotations

import enum
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from stabledub_core.errors import FrameFormatError, LandmarkShapeError, MissingLandmarksError, OptionError, TrackError
from stabledub_core.face.gaps import TrackStatus
from stabledub_core.face.indices import MOUTH_CORNERS, interocular, mouth_centre, mouth_width


class LipScale(str, enum.Enum):
    """Face measure that sets the crop side.

    INTEROCULAR: outer eye corner distance (unaffected by speech: wide and puckered lips keep their real size).
    MOUTH_WIDTH: mouth corner distance (follows the lips; taken as the segment median so speech does not zoom).
    """

    INTEROCULAR = "interocular"
    MOUTH_WIDTH = "mouth_width"


SCALE_MEASURES: dict[LipScale, Callable[[np.ndarray], np.ndarray]] = {
    LipScale.INTEROCULAR: interocular,
    LipScale.MOUTH_WIDTH: mouth_width,
}
# Crop side in units of the measure: about 1.8 mouth widths, i.e. lips plus a margin for open mouths.
DEFAULT_SPAN: dict[LipScale, float] = {LipScale.INTEROCULAR: 1.25, LipScale.MOUTH_WIDTH: 1.8}


def lip_crop_matrices(landmarks: np.ndarray, size: int, scale: LipScale = LipScale.INTEROCULAR,
                      span: float | None = None, align_rotation: bool = False,
                      per_frame_scale: bool = False) -> np.ndarray:
    """Affine maps from source pixels to lip-crop pixels.

    Args:
        landmarks: (K, 478, 2) landmarks of the K frames (no NaN).
        size: crop side in pixels.
        scale: face measure that sets the crop side.
        span: crop side in units of the measure (default ``DEFAULT_SPAN[scale]``).
        align_rotation: rotate so that the mouth-corner line is horizontal.
        per_frame_scale: measure each frame on its own (follows zooms) instead of the segment median (steadier).

    Returns:
        (K, 2, 3) float64 matrices for ``cv2.warpAffine`` (source -> crop).
    """
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.ndim != 3 or landmarks.shape[2] != 2:
        raise LandmarkShapeError(f"landmarks must be (K, 478, 2), got {landmarks.shape}")
    missing = np.flatnonzero(np.isnan(landmarks).any(axis=(1, 2)))
    if len(missing):
        raise MissingLandmarksError(f"frames {missing.tolist()} of the lip segment have no landmarks (MISSING); "
                                    "choose a segment of tracked frames, e.g. with choose_lip_segment(status, K)")
    scale = LipScale(scale)
    measure = SCALE_MEASURES[scale](landmarks)  # (K,)
    if not per_frame_scale:
        measure = np.full_like(measure, np.median(measure))
    side = measure * (DEFAULT_SPAN[scale] if span is None else span)  # (K,) source pixels
    zoom = size / np.maximum(side, 1e-6)  # (K,)
    centre = mouth_centre(landmarks)  # (K, 2)
    if align_rotation:
        corners = landmarks[:, MOUTH_CORNERS[1]] - landmarks[:, MOUTH_CORNERS[0]]  # (K, 2) image-left -> right
        angle = np.arctan2(corners[:, 1], corners[:, 0])
    else:
        angle = np.zeros(len(landmarks))
    cos, sin = np.cos(angle) * zoom, np.sin(angle) * zoom
    linear = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], 1)  # (K, 2, 2) = zoom * R(-angle)
    offset = size / 2.0 - np.einsum("kij,kj->ki", linear, centre)  # (K, 2)
    return np.concatenate([linear, offset[:, :, None]], axis=2)


def lip_crops(frames: np.ndarray, landmarks: np.ndarray, size: int = 112, scale: LipScale = LipScale.INTEROCULAR,
              span: float | None = None, align_rotation: bool = False, per_frame_scale: bool = False) -> np.ndarray:
    """Mouth-centred square crops of a segment of frames.

    Args:
        frames: (K, H, W, 3) uint8 RGB.
        landmarks: (K, 478, 2) landmarks of those frames.
        size: crop side in pixels.
        scale: face measure that sets the crop side.
        span: crop side in units of the measure (default ``DEFAULT_SPAN[scale]``).
        align_rotation: rotate so that the mouth-corner line is horizontal.
        per_frame_scale: measure each frame on its own instead of the segment median.

    Returns:
        (K, size, size, 3) uint8 crops.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise FrameFormatError(f"frames must be (K, H, W, 3) uint8 RGB, got {frames.shape} {frames.dtype}")
    if len(frames) != len(landmarks):
        raise TrackError(f"{len(frames)} frames but {len(landmarks)} landmark sets")
    if size < 1:
        raise OptionError(f"crop size must be >= 1 pixel, got {size}")
    matrices = lip_crop_matrices(landmarks, size, scale, span, align_rotation, per_frame_scale)  # (K, 2, 3)
    return np.stack([warp_crop(frame, matrix, size) for frame, matrix in zip(frames, matrices)])


def warp_crop(frame: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Warp one crop, area-averaging the source first when the crop shrinks it more than 2x (no aliasing).

    Args:
        frame: (H, W, 3) uint8.
        matrix: (2, 3) source -> crop affine map.
        size: crop side in pixels.

    Returns:
        (size, size, 3) uint8.
    """
    zoom = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if zoom < 0.5:
        # Source region under the crop (plus a margin), shrunk by area averaging to about the crop's scale.
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64)
        source = corners @ cv2.invertAffineTransform(matrix).T  # (4, 2)
        margin = 2.0 / zoom
        x0, y0 = np.maximum(np.floor(source.min(axis=0) - margin), 0).astype(int)
        x1, y1 = np.minimum(np.ceil(source.max(axis=0) + margin), frame.shape[1::-1]).astype(int)
        if x1 > x0 and y1 > y0:
            width, height = max(1, round((x1 - x0) * zoom)), max(1, round((y1 - y0) * zoom))
            frame = cv2.resize(frame[y0:y1, x0:x1], (width, height), interpolation=cv2.INTER_AREA)
            shrink = np.array([(x1 - x0) / width, (y1 - y0) / height])  # source pixels per shrunk pixel
            matrix = np.concatenate([matrix[:, :2] * shrink, (matrix[:, :2] @ [x0, y0] + matrix[:, 2])[:, None]], 1)
    return cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def warp_crops_torch(images: torch.Tensor, matrices: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Differentiable twin of :func:`warp_crop` for a training loss on generated frames (the sync loss).

    Bilinear with replicated borders, as ``cv2.warpAffine(..., INTER_LINEAR, BORDER_REPLICATE)`` in float, so the
    crops match :func:`lip_crops` up to cv2's 8-bit rounding; the gradient flows back into ``images``. The area
    pre-shrink of :func:`warp_crop` is not reproduced: a map shrinking the source more than 2x is refused.

    Args:
        images: (N, 3, H, W) float, e.g. in [0, 1].
        matrices: (N, 2, 3) source -> crop affine maps (:func:`lip_crop_matrices`).
        size: crop side in pixels.

    Returns:
        (N, 3, size, size) crops, in ``images``' dtype.
    """
    matrices = torch.as_tensor(matrices, dtype=torch.float64)
    if images.ndim != 4 or matrices.shape != (len(images), 2, 3):
        raise FrameFormatError(f"images must be (N, 3, H, W) with (N, 2, 3) matrices, got {tuple(images.shape)} "
                               f"and {tuple(matrices.shape)}")
    zoom = torch.linalg.det(matrices[:, :, :2]).abs().sqrt()
    if (zoom < 0.5).any():
        raise OptionError(f"a lip crop shrinks the frame {1 / float(zoom.min()):.1f}x (at most 2x without area "
                          "averaging): use a larger lip size or frames at a lower resolution")
    height, width = images.shape[-2:]
    linear, offset = matrices[:, :, :2], matrices[:, :, 2:]
    inverse = torch.linalg.inv(linear)  # (N, 2, 2) crop -> source
    v, u = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                          indexing="ij")
    crop = torch.stack([u, v], -1).reshape(1, -1, 2, 1)  # (1, size^2, 2, 1) crop pixel centres (x, y)
    source = (inverse[:, None] @ (crop - offset[:, None]))[..., 0]  # (N, size^2, 2) source pixels (x, y)
    scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], dtype=torch.float64)
    grid = (source * scale - 1).reshape(len(images), size, size, 2)  # align_corners: -1 and 1 are pixel centres
    return F.grid_sample(images, grid.to(images.device, images.dtype), mode="bilinear", padding_mode="border",
                         align_corners=True)


def choose_lip_segment(status: np.ndarray, length: int, seed: int = 0,
                       avoid: tuple[int, int] | None = None) -> int:
    """Pick the start of a segment of ``length`` tracked frames for the habit encoder.

    Segments that do not overlap ``avoid`` (e.g. the frames being dubbed, as in the paper's "another segment") are
    preferred; when the video has none, overlapping ones are used.

    Args:
        status: (F,) ``TrackStatus`` values.
        length: K, frames in the segment.
        seed: random seed of the choice.
        avoid: (start, stop) frame range to stay out of if possible.

    Returns:
        Start index s; frames [s, s + length) all have landmarks.
    """
    valid = np.asarray(status) != TrackStatus.MISSING  # (F,)
    if length < 1 or length > len(valid):
        raise OptionError(f"lip segment length must be in 1..{len(valid)} (the number of frames), got {length}")
    counts = np.convolve(valid.astype(int), np.ones(length, int), mode="valid")  # (F - K + 1,) tracked per window
    starts = np.flatnonzero(counts == length)
    if not len(starts):
        raise MissingLandmarksError(f"no run of {length} consecutive tracked frames for the lip-habit segment; "
                                    "use a shorter segment or a video where the face is visible longer")
    if avoid is not None:
        apart = starts[(starts + length <= avoid[0]) | (starts >= avoid[1])]
        starts = apart if len(apart) else starts
    return int(np.random.default_rng(seed).choice(starts))

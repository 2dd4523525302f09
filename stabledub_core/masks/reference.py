"""Choice of the appearance (reference) frame, against lip leaking.

A reference frame whose lips are open (or shaped like the target's) lets the model copy the mouth instead of
following the audio ("lip leaking", stabilized_sync_loss.md). Strategies:

- CLOSED_LIPS: the frame with the smallest mouth opening (inner-lip distance over mouth width).
- NEAREST_POSE: the frame whose head pose, judged from non-mouth landmarks after similarity alignment, is nearest
  to the mean of the frames being dubbed (EdiDub's reference selection, lips excluded).
- CLOSED_LIPS_NEAR_POSE: among the frames whose opening is within ``closed_tolerance`` of the smallest, the one
  nearest in head pose (both cures at once; useful per part of a long video).
- RANDOM: a seeded random tracked frame, as in the StableDub paper.

MISSING frames are never chosen; DETECTED frames are preferred over INTERPOLATED ones.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Callable

import numpy as np

from stabledub_core.errors import NoReferenceFrameError, OptionError, TrackError
from stabledub_core.face.gaps import TrackStatus
from stabledub_core.face.indices import INNER_LIP_PAIRS, POSE, mouth_width


class ReferenceStrategy(str, enum.Enum):
    """How the appearance frame is chosen."""

    CLOSED_LIPS = "closed_lips"
    NEAREST_POSE = "nearest_pose"
    CLOSED_LIPS_NEAR_POSE = "closed_lips_near_pose"
    RANDOM = "random"


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Mouth opening: mean inner-lip gap over the mouth width (0 = closed lips, ~0.5+ = wide open).

    Args:
        landmarks: (..., 478, 2) pixel coordinates.

    Returns:
        (...,) openings.
    """
    upper = landmarks[..., INNER_LIP_PAIRS[:, 0], :]  # (..., 5, 2)
    lower = landmarks[..., INNER_LIP_PAIRS[:, 1], :]
    gap = np.linalg.norm(upper - lower, axis=-1).mean(axis=-1)  # (...,)
    return gap / np.maximum(mouth_width(landmarks), 1e-6)


def _normalise(points: np.ndarray) -> np.ndarray:
    """Centre points and scale them to unit RMS radius. (..., P, 2) -> (..., P, 2)."""
    centred = points - points.mean(axis=-2, keepdims=True)
    radius = np.sqrt((centred ** 2).sum(axis=(-2, -1), keepdims=True) / points.shape[-2])
    return centred / np.maximum(radius, 1e-9)


def _procrustes_rotation(points: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rotations that best map normalised shapes onto a normalised target (orthogonal Procrustes, no reflection).

    Args:
        points: (N, P, 2) normalised shapes.
        target: (P, 2) normalised shape.

    Returns:
        (N, 2, 2) matrices R such that ``points @ R`` is nearest to ``target``.
    """
    cross = np.einsum("npi,pj->nij", points, target)  # (N, 2, 2)
    u, _, vt = np.linalg.svd(cross)
    d = np.sign(np.linalg.det(u @ vt))  # (N,) -1 where the best fit would be a reflection
    fix = np.stack([np.ones_like(d), d], -1)[:, :, None] * np.eye(2)  # (N, 2, 2) diag(1, d)
    return u @ fix @ vt


def pose_distance(landmarks: np.ndarray, target: np.ndarray, points: np.ndarray = POSE) -> np.ndarray:
    """Similarity-aligned distance between face shapes over non-mouth landmarks.

    Translation, scale and in-plane rotation are removed, so what remains is out-of-plane head pose (and non-mouth
    expression).

    Args:
        landmarks: (N, 478, 2) shapes to compare.
        target: (478, 2) reference shape.
        points: landmark indices compared (default: eyes, brows, nose, upper face contour).

    Returns:
        (N,) RMS distances in units of the shape's RMS radius.
    """
    shapes = _normalise(np.asarray(landmarks, np.float64)[:, points])  # (N, P, 2)
    goal = _normalise(np.asarray(target, np.float64)[points])  # (P, 2)
    aligned = shapes @ _procrustes_rotation(shapes, goal)  # (N, P, 2)
    return np.sqrt(((aligned - goal) ** 2).sum(axis=-1).mean(axis=-1))


def mean_shape(landmarks: np.ndarray, points: np.ndarray = POSE) -> np.ndarray:
    """Mean of similarity-aligned shapes (one Procrustes pass onto the first shape).

    Args:
        landmarks: (N, 478, 2) shapes.
        points: landmark indices used for the alignment.

    Returns:
        (478, 2) mean shape in normalised coordinates of ``points``.
    """
    landmarks = np.asarray(landmarks, np.float64)
    centre = landmarks[:, points].mean(axis=1, keepdims=True)  # (N, 1, 2)
    radius = np.sqrt(((landmarks[:, points] - centre) ** 2).sum(axis=(1, 2), keepdims=True) / len(points))
    shapes = (landmarks - centre) / np.maximum(radius, 1e-9)  # (N, 478, 2), ``points`` normalised
    rotation = _procrustes_rotation(shapes[:, points], shapes[0, points])  # (N, 2, 2)
    return (shapes @ rotation).mean(axis=0)


@dataclass
class ReferenceContext:
    """Inputs of a strategy.

    Args:
        landmarks: (F, 478, 2) the clip's landmarks.
        candidates: (M,) frame indices that may be chosen.
        target: (start, stop) frames being dubbed (the pose target of NEAREST_POSE).
        seed: random seed (RANDOM).
        closed_tolerance: openings up to the smallest plus this count as closed (CLOSED_LIPS_NEAR_POSE).
    """

    landmarks: np.ndarray
    candidates: np.ndarray
    target: tuple[int, int]
    seed: int = 0
    closed_tolerance: float = 0.05


def _closed_lips(ctx: ReferenceContext) -> int:
    opening = mouth_opening(ctx.landmarks[ctx.candidates])  # (M,)
    return int(ctx.candidates[np.argmin(opening)])


def _nearest_pose(ctx: ReferenceContext) -> int:
    start, stop = ctx.target
    frames = ctx.landmarks[start:stop]
    frames = frames[~np.isnan(frames).any(axis=(1, 2))]
    if not len(frames):
        raise NoReferenceFrameError(f"frames {start}..{stop} have no landmarks to take a head pose from")
    distance = pose_distance(ctx.landmarks[ctx.candidates], mean_shape(frames))  # (M,)
    return int(ctx.candidates[np.argmin(distance)])


def _closed_lips_near_pose(ctx: ReferenceContext) -> int:
    opening = mouth_opening(ctx.landmarks[ctx.candidates])  # (M,)
    closed = ctx.candidates[opening <= opening.min() + ctx.closed_tolerance]
    return _nearest_pose(dataclasses.replace(ctx, candidates=closed))


def _random(ctx: ReferenceContext) -> int:
    return int(np.random.default_rng(ctx.seed).choice(ctx.candidates))


STRATEGIES: dict[ReferenceStrategy, Callable[[ReferenceContext], int]] = {
    ReferenceStrategy.CLOSED_LIPS: _closed_lips,
    ReferenceStrategy.NEAREST_POSE: _nearest_pose,
    ReferenceStrategy.CLOSED_LIPS_NEAR_POSE: _closed_lips_near_pose,
    ReferenceStrategy.RANDOM: _random,
}


def choose_reference(landmarks: np.ndarray, status: np.ndarray,
                     strategy: ReferenceStrategy = ReferenceStrategy.CLOSED_LIPS, seed: int = 0,
                     target: tuple[int, int] | None = None, exclude_radius: int | None = None,
                     closed_tolerance: float = 0.05) -> int:
    """Choose the appearance frame of a clip.

    Args:
        landmarks: (F, 478, 2) landmarks (NaN where MISSING).
        status: (F,) ``TrackStatus`` values.
        strategy: how to choose.
        seed: random seed for RANDOM.
        target: (start, stop) frames being dubbed; default the whole clip.
        exclude_radius: if given, frames within this distance of the target are not chosen (EdiDub's exclusion
            range, useful in training so that the target frame is not its own reference).
        closed_tolerance: for CLOSED_LIPS_NEAR_POSE, openings up to the smallest plus this count as closed.

    Returns:
        Index of the chosen frame.
    """
    landmarks = np.asarray(landmarks, np.float64)
    status = np.asarray(status)
    frames = len(status)
    if landmarks.shape[0] != frames:
        raise TrackError(f"{landmarks.shape[0]} landmark frames but {frames} status values")
    start, stop = (0, frames) if target is None else target
    if not 0 <= start < stop <= frames:
        raise OptionError(f"target {target} is not a frame range inside 0..{frames}")
    allowed = status != TrackStatus.MISSING
    allowed &= ~np.isnan(landmarks).any(axis=(1, 2))
    if exclude_radius is not None:
        allowed[max(start - exclude_radius, 0):stop + exclude_radius] = False
    detected = allowed & (status == TrackStatus.DETECTED)
    candidates = np.flatnonzero(detected if detected.any() else allowed)
    if not len(candidates):
        raise NoReferenceFrameError("no tracked frame can be the reference (all frames MISSING or excluded); check "
                                    "the face track, or use a smaller exclude_radius")
    ctx = ReferenceContext(landmarks, candidates, (start, stop), seed, closed_tolerance)
    return STRATEGIES[ReferenceStrategy(strategy)](ctx)

"""Reference (appearance) frame choice against lip leaking (masks/reference.py)."""

import cv2
import numpy as np
import pytest

from stabledub_core.face import FaceTracker, TrackStatus
from stabledub_core.face.indices import MOUTH, mouth_width
from stabledub_core.masks.reference import (NoReferenceFrameError, ReferenceStrategy, choose_reference,
                                            mouth_opening, pose_distance)

LOWER_LIP = np.array([95, 88, 178, 87, 14, 317, 402, 318, 324])  # inner lower lip, corner to corner


@pytest.fixture(scope="module")
def face(face_model_path, media_dir) -> np.ndarray:
    image = cv2.cvtColor(cv2.imread(str(media_dir / "astronaut.png")), cv2.COLOR_BGR2RGB)
    with FaceTracker(face_model_path) as tracker:
        return tracker.track([image], fps=25).landmarks[0].astype(np.float64)  # (478, 2)


def with_opening(face: np.ndarray, opening: float) -> np.ndarray:
    """The face with its inner lower lip moved down by ``opening`` mouth widths."""
    out = face.copy()
    out[LOWER_LIP, 1] += opening * mouth_width(face)
    return out


def similarity(shape: np.ndarray, angle_deg: float, scale: float, shift) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = shape.mean(axis=0)
    return (shape - centre) @ rot.T + centre + np.asarray(shift)


def yaw(shape: np.ndarray, amount: float) -> np.ndarray:
    """Crude out-of-plane turn: compress x around the nose (not a similarity transform)."""
    out = shape.copy()
    out[:, 0] = shape[1, 0] + (shape[:, 0] - shape[1, 0]) * (1 - amount)
    return out


def test_mouth_opening_measures_the_lip_gap(face):
    base = mouth_opening(face)
    assert base < 0.25  # the photo's lips are nearly closed
    assert mouth_opening(with_opening(face, 0.3)) > base + 0.2
    assert np.isclose(mouth_opening(similarity(face, 20, 2.0, (50, -30))), base)  # scale and rotation free


def test_closed_lips_picks_the_smallest_opening_and_skips_missing_frames(face):
    openings = [0.3, 0.2, 0.02, 0.4, 0.1, 0.25]
    landmarks = np.stack([similarity(with_opening(face, o), 5 * i, 1 + 0.1 * i, (10 * i, 0))
                          for i, o in enumerate(openings)])
    status = np.zeros(len(openings), np.uint8)
    assert choose_reference(landmarks, status, ReferenceStrategy.CLOSED_LIPS) == 2
    status[2] = TrackStatus.MISSING
    landmarks[2] = np.nan
    assert choose_reference(landmarks, status, "closed_lips") == 4
    status[4] = TrackStatus.INTERPOLATED  # detected frames are preferred
    assert choose_reference(landmarks, status, "closed_lips") == 1


def test_nearest_pose_ignores_the_mouth_and_similarity_transforms(face):
    window = np.stack([similarity(yaw(face, 0.2), a, s, (d, d)) for a, s, d in [(0, 1, 0), (3, 1.1, 5)]])
    candidates = [
        yaw(face, 0.0),
        yaw(face, 0.1),
        similarity(with_opening(yaw(face, 0.2), 0.4), -10, 0.6, (80, 20)),  # same pose, open mouth, moved
        yaw(face, 0.35),
    ]
    landmarks = np.concatenate([window, np.stack(candidates)])
    status = np.zeros(len(landmarks), np.uint8)
    chosen = choose_reference(landmarks, status, ReferenceStrategy.NEAREST_POSE, target=(0, 2), exclude_radius=0)
    assert chosen == 4
    distances = pose_distance(np.stack(candidates), window[0])
    assert np.argsort(distances).tolist()[:2] == [2, 1]


def test_closed_lips_near_pose_combines_both(face):
    window = np.stack([yaw(face, 0.2)] * 2)
    candidates = [with_opening(yaw(face, 0.0), 0.0),  # closed, far pose
                  with_opening(yaw(face, 0.2), 0.02),  # nearly closed, same pose
                  with_opening(yaw(face, 0.2), 0.3)]  # open, same pose
    landmarks = np.concatenate([window, np.stack(candidates)])
    status = np.zeros(len(landmarks), np.uint8)
    kwargs = dict(target=(0, 2), exclude_radius=0)
    assert choose_reference(landmarks, status, ReferenceStrategy.CLOSED_LIPS, **kwargs) == 2
    assert choose_reference(landmarks, status, ReferenceStrategy.NEAREST_POSE, **kwargs) in (3, 4)
    # Openings 0.14, 0.19 (the turn foreshortens the mouth width) and 0.47.
    assert choose_reference(landmarks, status, "closed_lips_near_pose", closed_tolerance=0.08, **kwargs) == 3
    assert choose_reference(landmarks, status, "closed_lips_near_pose", closed_tolerance=0.0, **kwargs) == 2


def test_pose_distance_excludes_the_mouth(face):
    moved = face.copy()
    moved[MOUTH] += 15.0  # only the mouth moves
    assert pose_distance(moved[None], face)[0] < 1e-9
    assert pose_distance(yaw(face, 0.1)[None], face)[0] > 0.01


def test_random_is_seeded_and_never_picks_missing_frames(face):
    landmarks = np.stack([face] * 10)
    status = np.zeros(10, np.uint8)
    status[[1, 3, 5]] = TrackStatus.MISSING
    picks = [choose_reference(landmarks, status, ReferenceStrategy.RANDOM, seed=s) for s in range(40)]
    assert picks == [choose_reference(landmarks, status, ReferenceStrategy.RANDOM, seed=s) for s in range(40)]
    assert not {1, 3, 5} & set(picks) and len(set(picks)) > 3


def test_exclusion_range_and_errors(face):
    landmarks = np.stack([with_opening(face, o) for o in [0.0, 0.3, 0.3, 0.3, 0.2]])
    status = np.zeros(5, np.uint8)
    assert choose_reference(landmarks, status, target=(1, 3), exclude_radius=1) == 4
    with pytest.raises(NoReferenceFrameError, match="exclude_radius"):
        choose_reference(landmarks, status, target=(1, 3), exclude_radius=5)
    with pytest.raises(ValueError, match="target"):
        choose_reference(landmarks, status, target=(3, 9))
    with pytest.raises(NoReferenceFrameError, match="MISSING"):
        choose_reference(np.full_like(landmarks, np.nan), np.full(5, TrackStatus.MISSING, np.uint8))
    with pytest.raises(ValueError):
        choose_reference(landmarks, status, "sharpest")

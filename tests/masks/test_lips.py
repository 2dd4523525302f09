"""Lip crops for the habit encoder (masks/lips.py)."""

import cv2
import numpy as np
import pytest

from stabledub_core.face import FaceTracker, TrackStatus
from stabledub_core.face.indices import MOUTH_CORNERS, mouth_centre
from stabledub_core.masks.lips import (LipScale, MissingLandmarksError, choose_lip_segment, lip_crop_matrices,
                                       lip_crops)


@pytest.fixture(scope="module")
def astronaut(media_dir) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(media_dir / "astronaut.png")), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def astronaut_landmarks(face_model_path, astronaut) -> np.ndarray:
    with FaceTracker(face_model_path) as tracker:
        return tracker.track([astronaut], fps=25).landmarks[0]  # (478, 2)


def apply(matrix: np.ndarray, point) -> np.ndarray:
    return matrix[:, :2] @ np.asarray(point, float) + matrix[:, 2]


def blob_centre(crop: np.ndarray, channel: int) -> np.ndarray:
    """Centroid (x, y) of the pixels where ``channel`` dominates."""
    other = np.delete(crop, channel, axis=2).max(axis=2).astype(int)
    ys, xs = np.nonzero(crop[..., channel].astype(int) - other > 100)
    return np.array([xs.mean(), ys.mean()])


def test_crop_is_centred_on_the_mouth_of_the_photo(astronaut, astronaut_landmarks):
    crops = lip_crops(astronaut[None], astronaut_landmarks[None], size=96)
    assert crops.shape == (1, 96, 96, 3) and crops.dtype == np.uint8
    matrix = lip_crop_matrices(astronaut_landmarks[None], 96)[0]
    # The photo's lip centre lands in the middle of the crop, its mouth corners left and right of it.
    assert np.linalg.norm(apply(matrix, (223, 146)) - 48) < 4
    left, right = apply(matrix, (202, 139)), apply(matrix, (244, 141))
    assert 10 < left[0] < 38 and 58 < right[0] < 86 and abs(left[1] - 48) < 10 and abs(right[1] - 48) < 10


def test_crop_pixels_follow_the_landmarks(astronaut_landmarks):
    # Paint the mouth centre red and the mouth corners green/blue on a grey frame: they must land where expected.
    frame = np.full((512, 512, 3), 128, np.uint8)
    centre = mouth_centre(astronaut_landmarks)
    for point, colour in [(centre, (255, 0, 0)), (astronaut_landmarks[61], (0, 255, 0)),
                          (astronaut_landmarks[291], (0, 0, 255))]:
        cv2.circle(frame, tuple(int(round(v)) for v in point), 2, colour, -1)
    crop = lip_crops(frame[None], astronaut_landmarks[None], size=112)[0]
    assert np.linalg.norm(blob_centre(crop, 0) - 56) < 2
    assert blob_centre(crop, 1)[0] < 56 - 20 and blob_centre(crop, 2)[0] > 56 + 20


def test_rotation_alignment_levels_the_mouth_corners(astronaut, astronaut_landmarks):
    frame = np.full((512, 512, 3), 128, np.uint8)
    for index, colour in [(61, (0, 255, 0)), (291, (0, 0, 255))]:
        cv2.circle(frame, tuple(int(round(v)) for v in astronaut_landmarks[index]), 3, colour, -1)
    rotation = cv2.getRotationMatrix2D((256, 256), 30, 1.0)  # (2, 3)
    tilted = cv2.warpAffine(frame, rotation, (512, 512), borderValue=(128, 128, 128))
    landmarks = astronaut_landmarks @ rotation[:, :2].T + rotation[:, 2]
    plain = lip_crops(tilted[None], landmarks[None], size=112)[0]
    aligned = lip_crops(tilted[None], landmarks[None], size=112, align_rotation=True)[0]
    tilt = lambda crop: abs(blob_centre(crop, 1)[1] - blob_centre(crop, 2)[1])  # noqa: E731
    assert tilt(plain) > 15 and tilt(aligned) < 2


@pytest.mark.parametrize("scale", list(LipScale))
def test_crops_have_the_same_scale_whatever_the_face_size(astronaut, astronaut_landmarks, scale):
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    big = lip_crops(astronaut[None], astronaut_landmarks[None], size=64, scale=scale)[0].astype(float)
    little = lip_crops(small[None], (astronaut_landmarks * 0.5)[None], size=64, scale=scale)[0].astype(float)
    shifted = lip_crops(astronaut[None], astronaut_landmarks[None], size=64, scale=scale, span=2.5)[0].astype(float)
    assert np.abs(big - little).mean() < 8 < np.abs(big - shifted).mean()


def test_segment_scale_is_steady_while_the_mouth_moves(astronaut_landmarks):
    wide = astronaut_landmarks.copy()
    wide[MOUTH_CORNERS] += [[-10, 0], [10, 0]]  # the same face, a wider mouth
    both = np.stack([astronaut_landmarks, wide])
    median = lip_crop_matrices(both, 64, LipScale.MOUTH_WIDTH)
    per_frame = lip_crop_matrices(both, 64, LipScale.MOUTH_WIDTH, per_frame_scale=True)
    assert np.isclose(median[0, 0, 0], median[1, 0, 0]) and per_frame[1, 0, 0] < per_frame[0, 0, 0]


def test_missing_landmarks_and_bad_input_are_refused(astronaut, astronaut_landmarks):
    landmarks = np.stack([astronaut_landmarks, np.full_like(astronaut_landmarks, np.nan)])
    with pytest.raises(MissingLandmarksError, match=r"frames \[1\]"):
        lip_crops(np.stack([astronaut] * 2), landmarks, size=64)
    with pytest.raises(ValueError, match="uint8"):
        lip_crops(astronaut[None].astype(np.float32), astronaut_landmarks[None])


def test_choose_lip_segment_avoids_missing_frames_and_the_dubbed_window():
    status = np.zeros(40, np.uint8)
    status[10] = TrackStatus.MISSING
    starts = {choose_lip_segment(status, 8, seed=s, avoid=(0, 16)) for s in range(30)}
    assert starts and all(s >= 16 for s in starts) and len(starts) > 1
    assert all(not (s <= 10 < s + 8) for s in (choose_lip_segment(status, 8, seed=s) for s in range(30)))
    assert choose_lip_segment(status, 8, seed=3) == choose_lip_segment(status, 8, seed=3)
    status[::5] = TrackStatus.MISSING
    with pytest.raises(MissingLandmarksError, match="consecutive"):
        choose_lip_segment(status, 8)


def test_large_faces_are_area_averaged_not_aliased(astronaut_landmarks):
    # A face 4x larger than the photo's in a 2048 px frame: the crop shrinks the source about 6x.
    big = astronaut_landmarks * 4
    checker = ((np.indices((2048, 2048)).sum(axis=0) % 2) * 255).astype(np.uint8)
    frame = np.repeat(checker[:, :, None], 3, axis=2)
    crop = lip_crops(frame[None], big[None], size=64)[0].astype(float)
    assert abs(crop.mean() - 127.5) < 10 and crop.std() < 10  # a fine checkerboard averages to flat grey
    # The geometry is unchanged by the pre-shrink: a red disc at the mouth centre lands in the middle.
    frame = np.full((2048, 2048, 3), 128, np.uint8)
    cv2.circle(frame, tuple(int(round(v)) for v in mouth_centre(big)), 12, (255, 0, 0), -1)
    crop = lip_crops(frame[None], big[None], size=64)[0]
    assert np.linalg.norm(blob_centre(crop, 0) - 32) < 1.5

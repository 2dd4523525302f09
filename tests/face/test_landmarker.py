"""The landmarker's direct read of MediaPipe's C result against MediaPipe's public Python API."""

import numpy as np
import pytest

from stabledub_core.face.landmarker import LandmarkerMode, MediaPipeLandmarker
from stabledub_core.media.video import VideoReader


@pytest.fixture(scope="module")
def occluded(media_dir) -> np.ndarray:
    with VideoReader(media_dir / "face_occluded.mp4") as reader:
        return np.stack([frame.image for frame in reader.frames()][:20])


def test_the_installed_mediapipe_is_read_directly(face_model_path, occluded, monkeypatch):
    # MediaPipe 1.x (what requirements.txt installs) has the C API: the direct read must be the path that runs.
    def public_api(*args):
        raise AssertionError("the public API ran instead of the direct read")

    monkeypatch.setattr(MediaPipeLandmarker, "_detect_public", staticmethod(public_api))
    with MediaPipeLandmarker(face_model_path, num_faces=1) as landmarker:
        assert landmarker._direct is not None
        assert landmarker.detect(occluded[0], 0).shape == (1, 478, 2)


@pytest.mark.parametrize("mode", [LandmarkerMode.VIDEO, LandmarkerMode.IMAGE])
def test_direct_landmarks_equal_the_public_api(face_model_path, occluded, mode):
    with MediaPipeLandmarker(face_model_path, mode=mode, num_faces=1) as direct, \
            MediaPipeLandmarker(face_model_path, mode=mode, num_faces=1) as public:
        public._direct = None  # the public API's path
        assert direct._direct is not None
        for i, frame in enumerate(occluded):
            timestamp = i * 40 if mode is LandmarkerMode.VIDEO else None
            ours, theirs = direct.detect(frame, timestamp), public.detect(frame, timestamp)
            assert ours.shape == (1, 478, 2)
            np.testing.assert_array_equal(ours, theirs)


def test_no_face_gives_an_empty_array(face_model_path):
    with MediaPipeLandmarker(face_model_path, mode=LandmarkerMode.IMAGE) as landmarker:
        faces = landmarker.detect(np.zeros((64, 96, 3), np.uint8))
    assert faces.shape == (0, 478, 2) and faces.dtype == np.float32

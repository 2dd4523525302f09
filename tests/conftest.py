from pathlib import Path

import pytest

from helpers.repo_media import FACE_MODEL, build_media


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """The real-media test files (face_pan.mp4, face_occluded.mp4, astronaut.png, speech_es.wav,
    speech_es_44k_stereo.wav), made once per session in a temporary folder from files in the repository: see
    tests/helpers/repo_media.py."""
    return build_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="session")
def face_model_path() -> Path:
    """The bundled MediaPipe Face Landmarker model, assets/face_landmarker.task."""
    return FACE_MODEL

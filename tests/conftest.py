from pathlib import Path

import pytest
import torch

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


@pytest.fixture(autouse=True)
def _torch_threads_unchanged():
    """A test that changes torch's thread count leaks it into every later test (and the training tests compare
    in-process runs bit for bit with subprocess runs): fail the test that does, and restore the count."""
    before = torch.get_num_threads()
    yield
    after = torch.get_num_threads()
    if after != before:
        torch.set_num_threads(before)
        pytest.fail(f"the test changed torch's thread count from {before} to {after} and did not restore it")

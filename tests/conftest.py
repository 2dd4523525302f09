import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STABLEDUB_SHARED", REPO.parent / "shared"))
MEDIA = SHARED / "media"
FACE_MODEL = SHARED / "models" / "face_landmarker.task"


@pytest.fixture(scope="session")
def media_dir() -> Path:
    if not MEDIA.is_dir():
        pytest.fail(f"test media not found at {MEDIA}: check out ../shared beside the repository "
                    "or set STABLEDUB_SHARED")
    return MEDIA


@pytest.fixture(scope="session")
def face_model_path() -> Path:
    if not FACE_MODEL.is_file():
        pytest.fail(f"MediaPipe model not found at {FACE_MODEL}")
    return FACE_MODEL

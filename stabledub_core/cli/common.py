"""What every command shares: the bundled assets, the face-model search, the progress line."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from stabledub_core.errors import InputFileNotFoundError, require_file

ASSETS = Path(__file__).resolve().parents[2] / "assets"
FACE_MODEL_URL = ("https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/"
                  "face_landmarker.task")
# Where the MediaPipe face model is looked for without --face-model: the user's copy, then the bundled one
FACE_MODEL_SEARCH = (Path("models") / "mediapipe" / "face_landmarker.task", ASSETS / "face_landmarker.task")

FACE_MODEL_HELP = f"""\
The face tracker needs MediaPipe's face_landmarker.task (Apache-2.0). Without --face-model it uses
./models/mediapipe/face_landmarker.task if that exists, else the copy bundled in assets/face_landmarker.task.
Another version can be downloaded from
  {FACE_MODEL_URL}
"""


def find_face_model(path: Path | None = None) -> Path:
    """The MediaPipe face model: ``path`` if given, else the first of :data:`FACE_MODEL_SEARCH` that exists.

    Args:
        path: A ``face_landmarker.task`` given by the user (``--face-model``), or None.

    Returns:
        The path of an existing file.

    Raises:
        InputFileNotFoundError: If ``path`` is missing, or no default exists.
    """
    if path is not None:
        return require_file(path, "face model")
    found = next((p for p in FACE_MODEL_SEARCH if p.is_file()), None)
    if found is None:
        raise InputFileNotFoundError(f"MediaPipe face model not found at {' or '.join(map(str, FACE_MODEL_SEARCH))}"
                                     f": download {FACE_MODEL_URL} to the first, or pass --face-model PATH")
    return found


STAGE_UNITS = {"sample": "steps"}  # what a progress stage counts (default: frames)


class ProgressLine:
    """A single self-overwriting status line on stderr (only when enabled, i.e. stderr is a terminal)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._last = 0.0
        self._stage = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if stage == self._stage and done < total and now - self._last < 0.2:
            return
        self._last, self._stage = now, stage
        width = 30
        filled = int(width * done / max(total, 1))
        unit = STAGE_UNITS.get(stage, "frames")
        sys.stderr.write(f"\r{stage:>6} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {unit} ")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

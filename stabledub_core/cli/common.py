"""What every command shares: the bundled assets, the face-model search, the progress line."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from stabledub_core.errors import InputFileNotFoundError, require_file
from stabledub_core.media.output import remove_own_partials

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


class StopRequest:
    """The run's stop flag, set by the first SIGINT/SIGTERM/SIGHUP (``cli/main.py``); call it as a ``should_stop``.

    Attributes:
        signum: The signal that asked to stop, or None.
        done: Set when the command has finished (its cleanup included).
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """A new run: no stop requested, no output guarded."""
        self.signum: int | None = None
        self._requested = threading.Event()
        self.done = threading.Event()
        self._outputs: list[Path] = []

    def request(self, signum: int) -> None:
        self.signum = signum
        self._requested.set()

    def wait(self, timeout: float | None) -> bool:
        """Block until a stop is requested (True) or ``timeout`` s passed (False)."""
        return self._requested.wait(timeout)

    def __call__(self) -> bool:
        return self.signum is not None

    def guard(self, *paths) -> None:
        """Outputs of this run whose temporary files to delete if it stops or fails (``media.output``)."""
        self._outputs.extend(Path(p) for p in paths if p is not None)

    def remove_partials(self) -> None:
        """Delete this process's temporary files of the guarded outputs (never raises)."""
        for path in self._outputs:
            remove_own_partials(path)


STOP = StopRequest()  # the one stop flag of the command-line process

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

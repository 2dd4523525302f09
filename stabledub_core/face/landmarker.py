"""Thin wrapper over MediaPipe's Face Landmarker (Tasks API) returning landmark arrays in pixels."""

from __future__ import annotations

import ctypes
import enum
import logging
import zipfile
from pathlib import Path

import numpy as np

from stabledub_core.errors import FaceModelNotFoundError, FrameFormatError
from stabledub_core.face.indices import NUM_LANDMARKS

logger = logging.getLogger(__name__)

MODEL_FILENAME = "face_landmarker.task"
DETECTOR_MEMBER = "face_detector.tflite"  # the face detector bundled in face_landmarker.task
MODEL_URL = ("https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/latest/"
             "face_landmarker.task")


class LandmarkerMode(enum.Enum):
    """How a landmarker is fed: a stream with timestamps (tracks between frames) or independent images."""

    VIDEO = "video"
    IMAGE = "image"


def check_model_path(model_path: str | Path) -> Path:
    """Return the model path, or raise an error that names it and says where to get the file.

    Args:
        model_path: path of ``face_landmarker.task``, or a folder holding it (e.g. ComfyUI's models/mediapipe).

    Returns:
        The path of the model file.
    """
    path = Path(model_path).expanduser()
    if path.is_dir():
        path = path / MODEL_FILENAME
    if not path.is_file():
        raise FaceModelNotFoundError(
            f"MediaPipe face landmarker model not found at '{path}'. Download {MODEL_FILENAME} from {MODEL_URL} "
            f"and save it at that path (in ComfyUI: models/mediapipe/{MODEL_FILENAME}).")
    return path


def check_frame(frame: np.ndarray) -> np.ndarray:
    """Validate a frame and return it as a C-contiguous uint8 array (what ``mp.Image`` needs).

    Args:
        frame: (H, W, 3) uint8 RGB.

    Returns:
        (H, W, 3) uint8 C-contiguous.
    """
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        desc = f"{type(frame).__name__} {getattr(frame, 'shape', '')} {getattr(frame, 'dtype', '')}"
        raise FrameFormatError(f"face tracking needs (H, W, 3) uint8 RGB numpy frames, got {desc}; convert float "
                               "images with (img * 255).round().astype(np.uint8)")
    return np.ascontiguousarray(frame)


class _MediaPipeTask:
    """Owns one MediaPipe task (``self._task``); a context manager that closes it.

    Close it explicitly (``with`` or ``close()``): MediaPipe's own finaliser fails at interpreter exit, after its
    worker threads have stopped.
    """

    _task = None

    def _require_open(self):
        if self._task is None:
            raise RuntimeError(f"this {type(self).__name__} was closed")
        return self._task

    def close(self) -> None:
        """Release MediaPipe's graph (idempotent)."""
        if self._task is not None:
            self._task.close()
            self._task = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _DirectLandmarks:
    """Calls MediaPipe's C API for one face landmarker and copies the landmarks into numpy directly.

    MediaPipe 1.x runs its tasks through a C library bound with ctypes; ``detect_for_video`` / ``detect`` then turn
    every landmark into a Python dataclass, one ctypes field access at a time: about 1 ms per face and frame on these
    CPUs, 8% of a tracked frame. This makes the same C calls as those two methods (same arguments, same error
    checks, the result freed the same way) and reads the x, y fields of the C landmark array with one numpy view.
    The numbers are the same (tested for equality against the public API).

    Args:
        task: an open ``vision.FaceLandmarker``.
    """

    def __init__(self, task):
        # local: MediaPipe (and its TFLite runtime) is loaded only when a face is tracked
        from mediapipe.tasks.python.components.containers import landmark_c
        from mediapipe.tasks.python.vision import face_landmarker

        self._lib, self._handle = task._lib, task._handle  # AttributeError on MediaPipe without the C API
        self._result_type = face_landmarker.MpFaceLandmarkerResultC
        point = landmark_c.MpNormalizedLandmarkC
        # The (x, y) fields of the C struct, whatever else it holds (z, visibility, presence, a name pointer).
        self._point_dtype = np.dtype({"names": ["x", "y"], "formats": [np.float32, np.float32],
                                      "offsets": [point.x.offset, point.y.offset], "itemsize": ctypes.sizeof(point)})

    @classmethod
    def open(cls, task) -> "_DirectLandmarks | None":
        """The reader for ``task``, or None when the installed MediaPipe has no C API (then use the public one)."""
        try:
            return cls(task)
        except (ImportError, AttributeError) as error:
            logger.debug("MediaPipe without its C API (%s): landmarks are read through the public Python API", error)
            return None

    def detect(self, image, timestamp_ms: int | None) -> np.ndarray:
        """(N, 478, 2) normalised (x, y) of the faces in ``image`` (an ``mp.Image``); VIDEO mode with a timestamp."""
        result = self._result_type()
        if timestamp_ms is None:
            self._lib.MpFaceLandmarkerDetectImage(self._handle, image._image_ptr, None, ctypes.byref(result))
        else:
            self._lib.MpFaceLandmarkerDetectForVideo(self._handle, image._image_ptr, None, timestamp_ms,
                                                     ctypes.byref(result))
        try:
            faces = np.empty((result.face_landmarks_count, NUM_LANDMARKS, 2), np.float32)  # (N, 478, 2)
            for i in range(result.face_landmarks_count):
                points = result.face_landmarks[i]
                if points.landmarks_count != NUM_LANDMARKS:
                    raise RuntimeError(f"MediaPipe returned {points.landmarks_count} landmarks for a face, expected "
                                       f"{NUM_LANDMARKS}: use the face_landmarker.task model")
                raw = ctypes.string_at(points.landmarks, NUM_LANDMARKS * self._point_dtype.itemsize)
                xy = np.frombuffer(raw, self._point_dtype)
                faces[i, :, 0] = xy["x"]
                faces[i, :, 1] = xy["y"]
        finally:
            self._lib.MpFaceLandmarkerCloseResult(ctypes.byref(result))
        return faces


class MediaPipeLandmarker(_MediaPipeTask):
    """One MediaPipe ``FaceLandmarker``; a context manager that closes it (see :class:`_MediaPipeTask`).

    Args:
        model_path: path of ``face_landmarker.task``.
        mode: ``LandmarkerMode.VIDEO`` (needs increasing timestamps) or ``LandmarkerMode.IMAGE``.
        num_faces: most faces returned per call.
        min_detection_confidence: face detector threshold.
        min_presence_confidence: landmark-model face presence threshold.
        min_tracking_confidence: threshold to keep tracking between video frames.
    """

    def __init__(self, model_path: str | Path, mode: LandmarkerMode = LandmarkerMode.VIDEO, num_faces: int = 2,
                 min_detection_confidence: float = 0.5, min_presence_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5):
        path = check_model_path(model_path)
        # local: MediaPipe (and its TFLite runtime) is loaded only when a face is tracked
        from mediapipe.tasks.python import BaseOptions, vision

        running_mode = {LandmarkerMode.VIDEO: vision.RunningMode.VIDEO,
                        LandmarkerMode.IMAGE: vision.RunningMode.IMAGE}[mode]
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(path)), running_mode=running_mode, num_faces=num_faces,
            min_face_detection_confidence=min_detection_confidence,
            min_face_presence_confidence=min_presence_confidence,
            min_tracking_confidence=min_tracking_confidence)
        self.mode = mode
        self._task = vision.FaceLandmarker.create_from_options(options)
        self._direct = _DirectLandmarks.open(self._task)
        self._last_timestamp_ms = -1

    def detect(self, frame: np.ndarray, timestamp_ms: int | None = None) -> np.ndarray:
        """Find faces in one frame.

        Args:
            frame: (H, W, 3) uint8 RGB.
            timestamp_ms: required in VIDEO mode; values that do not increase are bumped by 1 ms.

        Returns:
            (N, 478, 2) float32 (x, y) pixel coordinates of the N faces found, in MediaPipe's order.
        """
        import mediapipe as mp  # local: MediaPipe (and its TFLite runtime) is loaded only when a face is tracked

        landmarker = self._require_open()
        frame = check_frame(frame)
        height, width = frame.shape[:2]
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=frame)
        if self.mode is LandmarkerMode.VIDEO:
            if timestamp_ms is None:
                raise ValueError("a VIDEO-mode landmarker needs a timestamp for every frame")
            timestamp_ms = max(int(timestamp_ms), self._last_timestamp_ms + 1)
            self._last_timestamp_ms = timestamp_ms
        else:
            timestamp_ms = None
        faces = (self._direct.detect(image, timestamp_ms) if self._direct is not None
                 else self._detect_public(landmarker, image, timestamp_ms))  # (N, 478, 2) normalised
        faces *= np.array([width, height], np.float32)
        return faces

    @staticmethod
    def _detect_public(landmarker, image, timestamp_ms: int | None) -> np.ndarray:
        """(N, 478, 2) normalised (x, y) through MediaPipe's public Python API (any MediaPipe version)."""
        if timestamp_ms is None:
            result = landmarker.detect(image)
        else:
            result = landmarker.detect_for_video(image, timestamp_ms)
        faces = np.empty((len(result.face_landmarks), NUM_LANDMARKS, 2), np.float32)  # (N, 478, 2)
        for i, face in enumerate(result.face_landmarks):
            faces[i] = [(p.x, p.y) for p in face]
        return faces

    @property
    def last_timestamp_ms(self) -> int:
        """The last timestamp given to a VIDEO-mode landmarker (-1 before the first frame)."""
        return self._last_timestamp_ms


class FaceCounter(_MediaPipeTask):
    """Counts faces in a frame with the face detector bundled in ``face_landmarker.task`` (no landmarks).

    The detector is the one the landmarker runs internally, at about a third of a landmarker pass on one face, so it
    can cheaply tell whether a video shows more than one face. A context manager that closes it.

    Args:
        model_path: path of ``face_landmarker.task``.
        min_detection_confidence: face detector threshold (use the landmarker's).
    """

    def __init__(self, model_path: str | Path, min_detection_confidence: float = 0.5):
        path = check_model_path(model_path)
        try:
            with zipfile.ZipFile(path) as bundle:
                detector = bundle.read(DETECTOR_MEMBER)
        except (zipfile.BadZipFile, KeyError) as error:
            raise FaceModelNotFoundError(f"'{path}' is not a MediaPipe face landmarker bundle (no {DETECTOR_MEMBER} "
                                         f"inside): download {MODEL_FILENAME} again from {MODEL_URL}") from error
        # local: MediaPipe (and its TFLite runtime) is loaded only when a face is tracked
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_buffer=detector),
                                             running_mode=vision.RunningMode.IMAGE,
                                             min_detection_confidence=min_detection_confidence)
        self._task = vision.FaceDetector.create_from_options(options)

    def count(self, frame: np.ndarray) -> int:
        """Number of faces the detector finds in one (H, W, 3) uint8 RGB frame."""
        import mediapipe as mp  # local: MediaPipe (and its TFLite runtime) is loaded only when a face is tracked

        detector = self._require_open()
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=check_frame(frame))
        return len(detector.detect(image).detections)

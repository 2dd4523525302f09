"""Face tracking: MediaPipe Face Landmarker, face selection, fine search for small faces, smoothing, gap filling."""

from stabledub_core.face.gaps import TrackStatus
from stabledub_core.face.landmarker import FaceModelNotFoundError, FrameFormatError
from stabledub_core.face.search import FineSearchConfig
from stabledub_core.face.selection import FaceSelection
from stabledub_core.face.smoothing import OneEuroConfig
from stabledub_core.face.track import FaceTrack, FaceTracker, TrackerConfig

__all__ = ["FaceModelNotFoundError", "FaceSelection", "FaceTrack", "FaceTracker", "FineSearchConfig",
           "FrameFormatError", "OneEuroConfig", "TrackStatus", "TrackerConfig"]

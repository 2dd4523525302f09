"""Face tracking: MediaPipe Face Landmarker, face selection, fine search for small faces, smoothing, gap filling."""

from .gaps import TrackStatus
from .landmarker import FaceModelNotFoundError, FrameFormatError
from .search import FineSearchConfig
from .selection import FaceSelection
from .smoothing import OneEuroConfig
from .track import FaceTrack, FaceTracker, TrackerConfig

__all__ = ["FaceModelNotFoundError", "FaceSelection", "FaceTrack", "FaceTracker", "FineSearchConfig",
           "FrameFormatError", "OneEuroConfig", "TrackStatus", "TrackerConfig"]

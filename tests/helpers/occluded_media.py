"""Real-media fixtures for the masks and compositing tests: face_occluded.mp4 with its landmarks and microphone mask."""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

from stabledub_core.face.track import FaceTrack, FaceTracker, TrackStatus
from stabledub_core.masks import regions
from stabledub_core.media.video import VideoReader

MIC_FROM = 37  # first frame of face_occluded.mp4 with the microphone


@functools.lru_cache(maxsize=None)
def read_video(path: Path) -> tuple[np.ndarray, float]:
    """(F, H, W, 3) uint8 RGB frames (read-only) and the frame rate."""
    with VideoReader(path) as reader:
        frames = np.stack([frame.image for frame in reader.frames()])
        fps = float(reader.fps)
    frames.setflags(write=False)
    return frames, fps


@functools.lru_cache(maxsize=None)
def track_video(path: Path, model_path: Path) -> FaceTrack:
    """The face track of a whole video (FaceTracker, MediaPipe VIDEO mode)."""
    frames, fps = read_video(path)
    with FaceTracker(model_path) as tracker:
        return tracker.track(frames, fps=fps)


def with_status(track: FaceTrack, landmarks: np.ndarray | None = None, status: np.ndarray | None = None,
                frame_size: tuple[int, int] | None = None) -> FaceTrack:
    """A copy of a track with some of its fields replaced."""
    return FaceTrack(landmarks=track.landmarks if landmarks is None else landmarks,
                     status=track.status if status is None else status,
                     frame_size=track.frame_size if frame_size is None else frame_size)


def with_missing(track: FaceTrack, frames) -> FaceTrack:
    """A copy of a track whose given frames are MISSING."""
    landmarks = track.landmarks.copy()
    status = track.status.copy()
    landmarks[frames] = np.nan
    status[frames] = TrackStatus.MISSING
    return with_status(track, landmarks, status)


def microphone_mask(frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(F, H, W) float32: the dark grey microphone head over the face.

    Rule, from inspecting the frames: skin is bright and saturated (e.g. RGB 224,188,166); the microphone head is a
    dark grey disc (71,70,75) with a black rim. Dark (max channel < 110), unsaturated (max - min < 40) pixels inside
    the face oval and below the nose (landmark 2) are the microphone: the face oval keeps out the black suit,
    the nose line keeps out the eyes, and the hair's dark strands are saturated. Of what is left, the largest
    connected blob (at least 50 pixels) is the microphone; stray dark pixels in the mouth corners are dropped.
    """
    out = np.zeros(frames.shape[:3], np.float32)
    for i, points in enumerate(landmarks):
        oval = np.round(points[list(regions.FACE_OVAL)]).astype(np.int32)  # (P, 2)
        x0, x1 = max(oval[:, 0].min(), 0), oval[:, 0].max() + 1
        y0, y1 = max(int(np.ceil(points[2, 1])), 0), oval[:, 1].max() + 1  # below the nose only
        rgb = frames[i, y0:y1, x0:x1].astype(np.int16)
        dark = (rgb.max(axis=-1) < 110) & (rgb.max(axis=-1) - rgb.min(axis=-1) < 40)
        face = np.zeros(dark.shape, np.uint8)
        cv2.fillPoly(face, [oval - (x0, y0)], 1)
        count, labels, stats, _ = cv2.connectedComponentsWithStats((dark & (face > 0)).astype(np.uint8),
                                                                   connectivity=8)
        if count > 1:
            largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            if stats[largest, cv2.CC_STAT_AREA] >= 50:
                out[i, y0:y1, x0:x1] = labels == largest
    return out


@functools.lru_cache(maxsize=None)
def occluded_microphone(media_dir: Path, face_model_path: Path) -> np.ndarray:
    """The microphone mask of face_occluded.mp4 (read-only)."""
    frames, track = occluded(media_dir, face_model_path)
    mic = microphone_mask(frames, track.landmarks)
    mic.setflags(write=False)
    return mic


def occluded(media_dir: Path, face_model_path: Path) -> tuple[np.ndarray, FaceTrack]:
    path = media_dir / "face_occluded.mp4"
    return read_video(path)[0], track_video(path, face_model_path)

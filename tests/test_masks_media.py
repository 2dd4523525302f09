"""Real-media fixtures for the masks tests (face_occluded.mp4 with its landmarks and microphone mask), and checks of
the microphone rule itself."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import av
import cv2
import numpy as np

from stabledub_core.masks import regions

MIC_FROM = 37  # first frame of face_occluded.mp4 with the microphone


@functools.lru_cache(maxsize=None)
def read_video(path: Path) -> np.ndarray:
    """(F, H, W, 3) uint8 RGB frames."""
    with av.open(str(path)) as container:
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    frames.setflags(write=False)
    return frames


@functools.lru_cache(maxsize=None)
def track_video(path: Path, model_path: Path) -> SimpleNamespace:
    """Landmarks of every frame (MediaPipe Face Landmarker, VIDEO mode) as a FaceTrack-shaped namespace."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    frames = read_video(path)
    options = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(model_path)),
                                           running_mode=vision.RunningMode.VIDEO, num_faces=1)
    landmarks = np.full((len(frames), regions.NUM_LANDMARKS, 2), np.nan, np.float32)
    status = np.full(len(frames), 2, np.uint8)
    height, width = frames.shape[1:3]
    landmarker = vision.FaceLandmarker.create_from_options(options)
    try:
        for i, frame in enumerate(frames):
            result = landmarker.detect_for_video(mp.Image(image_format=mp.ImageFormat.SRGB,
                                                          data=np.ascontiguousarray(frame)), i * 40)
            if result.face_landmarks:
                landmarks[i] = [(p.x * width, p.y * height) for p in result.face_landmarks[0][:478]]
                status[i] = 0
    finally:
        landmarker.close()
    return SimpleNamespace(landmarks=landmarks, status=status, frame_size=(height, width))


def microphone_mask(frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(F, H, W) float32: the dark grey microphone head over the face.

    Rule, from inspecting the frames: skin is bright and saturated (e.g. RGB 224,188,166); the microphone head is a
    dark grey disc (71,70,75) with a black rim. Dark (max channel < 110), unsaturated (max - min < 40) pixels inside
    the face oval and below the nose (landmark 2) are the microphone: the face oval keeps out the black suit,
    the nose line keeps out the eyes, and the hair's dark strands are saturated. Of what is left, the largest
    connected blob (at least 50 pixels) is the microphone; stray dark pixels in the mouth corners are dropped.
    """
    rgb = frames.astype(np.int16)
    dark = (rgb.max(axis=-1) < 110) & (rgb.max(axis=-1) - rgb.min(axis=-1) < 40)  # (F, H, W)
    out = np.zeros(dark.shape, np.float32)
    for i, points in enumerate(landmarks):
        face = np.zeros(dark.shape[1:], np.uint8)
        cv2.fillPoly(face, [np.round(points[list(regions.FACE_OVAL)]).astype(np.int32)], 1)
        face[:int(np.ceil(points[2, 1]))] = 0
        count, labels, stats, _ = cv2.connectedComponentsWithStats((dark[i] & (face > 0)).astype(np.uint8),
                                                                   connectivity=8)
        if count > 1:
            largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            if stats[largest, cv2.CC_STAT_AREA] >= 50:
                out[i] = labels == largest
    return out


def occluded(media_dir: Path, face_model_path: Path) -> tuple[np.ndarray, SimpleNamespace]:
    path = media_dir / "face_occluded.mp4"
    return read_video(path), track_video(path, face_model_path)


def test_face_found_in_every_frame(media_dir, face_model_path):
    frames, track = occluded(media_dir, face_model_path)
    assert frames.shape == (75, 512, 512, 3)
    assert (track.status == 0).all()
    # README: lip centre near (223, 146) in the photo.
    lips = track.landmarks[0, list(regions.LIP_CENTRES)].mean(axis=0)
    assert np.abs(lips - (223, 146)).max() < 12


def test_microphone_rule_finds_the_microphone_only_from_frame_37(media_dir, face_model_path):
    frames, track = occluded(media_dir, face_model_path)
    mic = microphone_mask(frames, track.landmarks)
    area = mic.sum(axis=(1, 2))
    assert area[:MIC_FROM].max() == 0  # no microphone: no dark grey blob on the lower face
    assert area[MIC_FROM:].min() > 300
    # It sits on the right mouth corner (landmark 291), not on the left one (61).
    for i in (MIC_FROM, 50):
        right = np.round(track.landmarks[i, regions.MOUTH_CORNERS[1]]).astype(int)
        left = np.round(track.landmarks[i, regions.MOUTH_CORNERS[0]]).astype(int)
        ys, xs = np.nonzero(mic[i])
        assert np.hypot(xs - right[0], ys - right[1]).min() < 8
        assert np.hypot(xs - left[0], ys - left[1]).min() > 12
        assert xs.mean() > (left[0] + right[0]) / 2 + 5

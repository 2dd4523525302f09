"""Checks of the real-media fixtures (helpers/occluded_media.py): the face is found, and the microphone rule finds
the microphone of face_occluded.mp4 only where it is."""

from __future__ import annotations

import numpy as np

from helpers.occluded_media import MIC_FROM, occluded, occluded_microphone
from stabledub_core.face.track import TrackStatus
from stabledub_core.masks import regions


def test_face_found_in_every_frame(media_dir, face_model_path):
    frames, track = occluded(media_dir, face_model_path)
    assert frames.shape == (75, 512, 512, 3)
    assert (track.status != TrackStatus.MISSING).all()
    # helpers/repo_media.py: lip centre near (223, 146) in the photo.
    lips = track.landmarks[0, list(regions.LIP_CENTRES)].mean(axis=0)
    assert np.abs(lips - (223, 146)).max() < 12


def test_microphone_rule_finds_the_microphone_only_from_frame_37(media_dir, face_model_path):
    _, track = occluded(media_dir, face_model_path)
    mic = occluded_microphone(media_dir, face_model_path)
    area = mic.sum(axis=(1, 2))
    assert area[:MIC_FROM].max() == 0  # no microphone: no dark grey blob on the lower face
    assert area[MIC_FROM:].min() > 300
    # It sits on the image-right mouth corner (landmark 291), not on the image-left one (61).
    for i in (MIC_FROM, 50):
        right = np.round(track.landmarks[i, regions.MOUTH_CORNERS[1]]).astype(int)
        left = np.round(track.landmarks[i, regions.MOUTH_CORNERS[0]]).astype(int)
        ys, xs = np.nonzero(mic[i])
        assert np.hypot(xs - right[0], ys - right[1]).min() < 8
        assert np.hypot(xs - left[0], ys - left[1]).min() > 12
        assert xs.mean() > (left[0] + right[0]) / 2 + 5

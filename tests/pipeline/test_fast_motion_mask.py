"""A face moving fast across the frame is dubbed inside a mask that follows it, not a band over the background.

The clip is generated: the astronaut's face (192 px) translated 34 px a frame over a flat background, tracked by the
real tracker and dubbed by a transparent crop model (the inverted source crop is its 'generation'), so the pixels a
dub repaints are exactly those its masks cover. ``max_mask_growth=100`` plans as before the cap.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from helpers.media_factory import tone
from helpers.repo_media import astronaut
from stabledub_core.media.frames import FrameSource
from stabledub_core.pipeline.dub import dub_clip, mask_cap_note
from stabledub_core.pipeline.options import DubOptions

FACE, FRAMES, STEP = 192, 16, 34


class InvertCrops:
    """A ChunkModel whose 'generation' is the inverted source crop."""

    crop_size = 64
    crop_box_scale = 1.8
    lip_size = 32
    window = 8  # a window's travel (7 * 34 px) fits in its crop box, which the frame's height bounds

    def encode_habit(self, lip_crops):
        return torch.zeros(4)

    def begin(self, wave16, frame_times, habit, source=None):
        pass

    def generate(self, start, crops, masks, appearance, clock, should_stop, on_step=None):
        return 255 - crops


def moving_face(step: int) -> np.ndarray:
    """``(16, 576, 384 + 15 * step, 3)`` uint8: the face pasted ``step`` px further right in every frame (the frame
    is tall enough for a crop box holding a window's travel)."""
    face = cv2.resize(astronaut(), (FACE, FACE), interpolation=cv2.INTER_AREA)
    frames = np.full((FRAMES, 3 * FACE, 2 * FACE + step * (FRAMES - 1), 3), 90, np.uint8)
    for k in range(FRAMES):
        x = FACE // 2 + step * k
        frames[k, FACE:2 * FACE, x:x + FACE] = face
    return frames


def dub(frames: np.ndarray, face_model_path, **values):
    options = DubOptions.from_values(face_model=face_model_path, **values)
    return dub_clip(FrameSource(frames, 25), tone(FRAMES / 25, 16000), 16000, InvertCrops(), options)


def changed(source: np.ndarray, result) -> np.ndarray:
    """``(F, H, W)`` bool: the pixels the dub repainted (the model inverts them)."""
    return np.abs(result.frames.astype(int) - source).max(axis=-1) > 8


@pytest.fixture(scope="module")
def fast(face_model_path):
    frames = moving_face(STEP)
    return frames, dub(frames, face_model_path), dub(frames, face_model_path, max_mask_growth=100.0)


def test_a_fast_face_is_repainted_only_around_its_mouth(fast):
    frames, capped, before = fast
    now, wide = changed(frames, capped), changed(frames, before)
    area_now, area_before = now.sum(axis=(1, 2)), wide.sum(axis=(1, 2))  # (F,) repainted pixels per frame
    assert area_now.max() * 4 < area_before.min(), (area_now, area_before)
    # Before, frame 0 repainted the background where the face was not yet (x beyond the face's right edge).
    right_of_face = slice(FACE // 2 + FACE, None)
    assert wide[0][:, right_of_face].sum() > 1000 and now[0][:, right_of_face].sum() == 0
    # Now the repainted region moves with the face: in a window (frames 0-7, 8-15) frame k's is its first frame's
    # shifted by the face's travel (within 6 px: tracking, and 64-pixel crops of a 576-pixel box).
    for first, k in ((0, 3), (0, 7), (8, 12), (8, 15)):
        ys, xs = np.nonzero(now[k])
        ys0, xs0 = np.nonzero(now[first])
        assert abs(xs.mean() - xs0.mean() - (k - first) * STEP) < 6 and abs(ys.mean() - ys0.mean()) < 6


def test_the_cap_is_counted_and_said(fast):
    _, capped, before = fast
    caps = capped.mask_caps
    assert (caps.spans, caps.frames, caps.total_spans, caps.limit) == (2, 16, 2, 1.5) and caps.widest > 3
    assert before.mask_caps.spans == 0 and mask_cap_note(before.mask_caps) is None
    note = mask_cap_note(caps, "--max-mask-growth")
    assert note.startswith("fast motion: in 2 of 2 windows (16 frames)")
    assert f"up to {caps.widest:.1f}x one frame's mask" in note and "at most 1.5x (--max-mask-growth sets it)" in note
    assert caps.as_dict() == {"capped_windows": 2, "capped_frames": 16, "windows": 2,
                              "widest_growth": round(caps.widest, 2), "max_growth": 1.5}


def test_a_still_face_is_dubbed_byte_identically(face_model_path):
    frames = moving_face(0)
    now, before = dub(frames, face_model_path), dub(frames, face_model_path, max_mask_growth=100.0)
    assert now.mask_caps.spans == 0 and now.mask_caps.total_spans == 2
    assert now.frames.tobytes() == before.frames.tobytes()
    assert changed(frames, now).sum() > 1000  # the mouth was dubbed

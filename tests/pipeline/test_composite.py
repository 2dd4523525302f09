"""Crop -> paste back on the real test video: round trip, untouched pixels, any size, pass-through, colour match."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stabledub_core.masks.crop_spans import CropPlan, plan_crop_spans
from stabledub_core.media.frames import FrameSource
from stabledub_core.pipeline.composite import CompositeError, PasteWeight, crop_frames, mask_to_box, paste_back
from stabledub_core.pipeline.modular import crop_clip, paste_clip
from helpers.occluded_media import occluded, with_missing, with_status


@pytest.fixture(scope="module")
def clip(media_dir, face_model_path):
    frames, track = occluded(media_dir, face_model_path)
    return frames[::3], with_status(track, track.landmarks[::3], track.status[::3])


def _mask_in_frame(window, frame_size) -> np.ndarray:
    """The pasted weight (resampled Mu) in frame coordinates."""
    out = np.zeros(frame_size, np.float32)
    x0, y0, x1, y1 = window.box
    out[y0:y1, x0:x1] = mask_to_box(window.union_mask, x1 - x0)
    return out


def _round_trip(frames, track, crop_size=512, upscale=1):
    """Crop every frame with its span's box and paste the crops back (the pipeline's paste loop)."""
    plan = CropPlan(track, crop_size, 8)
    source = FrameSource(frames, 25)
    crops = crop_clip(source, plan)
    if upscale != 1:
        crops = np.stack([cv2.resize(c, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
                          for c in crops])
    return plan.spans(), crops, paste_clip(source, crops, plan)


def _check_round_trip(frames, windows, out, min_psnr):
    for window in windows:
        weight = _mask_in_frame(window, frames.shape[1:3])
        inside, outside = weight > 0, weight == 0
        for i in range(window.start, window.stop):
            assert np.array_equal(out[i][outside], frames[i][outside])
            error = (out[i][inside].astype(np.float64) - frames[i][inside]) ** 2
            assert 10 * np.log10(255 ** 2 / max(error.mean(), 1e-12)) > min_psnr


def test_unmodified_crops_reproduce_the_input(clip):
    frames, track = clip
    windows, crops, out = _round_trip(frames, track)
    assert crops.shape == (len(frames), 512, 512, 3)
    _check_round_trip(frames, windows, out, 50)
    assert not np.shares_memory(out, frames)


def test_crops_at_2x_and_4x_size_paste_correctly(clip):
    frames, track = clip
    for upscale, psnr in ((2, 38), (4, 36)):
        windows, crops, out = _round_trip(frames[:8], track[0:8], crop_size=256, upscale=upscale)
        assert crops.shape[1] == 256 * upscale
        _check_round_trip(frames[:8], windows, out, psnr)


def test_missing_frame_passes_through_unchanged(clip):
    frames, track = clip
    plan = CropPlan(with_missing(track, [2, 11]), 128, 8)
    crops = np.full((len(frames), 128, 128, 3), 255, np.uint8)  # obviously different content
    out = paste_clip(FrameSource(frames, 25), crops, plan)
    assert np.array_equal(out[2], frames[2]) and np.array_equal(out[11], frames[11])
    assert not np.array_equal(out[3], frames[3])


@pytest.mark.parametrize("frame_size, scale, count, min_psnr", [
    ((397, 513), 0.7, 8, 40),
    ((1280, 720), 1.3, 8, 40),
    ((2160, 3840), 4.0, 1, 38),  # 4K: the box (~950 px) is larger than the crop; paste enlarges the crops
])
def test_odd_portrait_and_4k_frames(clip, frame_size, scale, count, min_psnr):
    frames, track = clip
    frames, landmarks = frames[:count], track.landmarks[:count]
    height, width = frame_size
    offset = np.array([(width - 512 * scale) / 2, (height - 512 * scale) / 2])
    matrix = np.array([[scale, 0, offset[0]], [0, scale, offset[1]]], np.float32)
    padded = np.stack([cv2.warpAffine(f, matrix, (width, height), flags=cv2.INTER_LINEAR) for f in frames])
    moved = with_status(track[0:count], landmarks * scale + offset.astype(np.float32), frame_size=frame_size)
    windows, crops, out = _round_trip(padded, moved, crop_size=256)
    assert out.shape == padded.shape
    _check_round_trip(padded, windows, out, min_psnr)


def test_color_match_removes_a_colour_cast(clip):
    frames, track = clip
    frames = frames[:4]
    windows = plan_crop_spans(track[0:4], length=4, crop_size=256)
    window = windows[0]
    crops = crop_frames(frames, window.box, 256).astype(np.int16)
    cast = np.clip(crops + np.array([40, -10, -25]), 0, 255).astype(np.uint8)
    plain = paste_back(frames, cast, window.box, window.union_mask)
    matched = paste_back(frames, cast, window.box, window.union_mask, color_match=True)
    inside = _mask_in_frame(window, frames.shape[1:3]) > 0.5
    plain_error = np.abs(plain[:, inside].astype(int) - frames[:, inside]).mean()
    matched_error = np.abs(matched[:, inside].astype(int) - frames[:, inside]).mean()
    assert matched_error < 0.35 * plain_error
    outside = _mask_in_frame(window, frames.shape[1:3]) == 0
    assert np.array_equal(matched[:, outside], frames[:, outside])


def test_prepared_weight_pastes_the_same(clip):
    frames, track = clip
    window = plan_crop_spans(track[0:4], length=4, crop_size=128)[0]
    crops = np.full((4, 128, 128, 3), 200, np.uint8)
    weight = PasteWeight.prepare(window.union_mask, window.box[2] - window.box[0])
    assert np.array_equal(paste_back(frames[:4], crops, window.box, weight),
                          paste_back(frames[:4], crops, window.box, window.union_mask))
    with pytest.raises(CompositeError, match="prepared"):
        paste_back(frames[:4], crops, (0, 0, 100, 100), weight)


def test_bad_shapes_are_rejected(clip):
    frames, track = clip
    window = plan_crop_spans(track, length=8, crop_size=64)[0]
    with pytest.raises(CompositeError, match="uint8"):
        crop_frames(frames[:2].astype(np.float32), window.box, 64)
    with pytest.raises(CompositeError, match="square"):
        crop_frames(frames[:2], (0, 0, 10, 20), 64)
    with pytest.raises(CompositeError, match="crops"):
        paste_back(frames[:2], np.zeros((3, 64, 64, 3), np.uint8), window.box, window.union_mask)

"""Exposure patches: explicit lists, occluder masks (the microphone of face_occluded.mp4) and the training schedule."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from stabledub_core.masks import exposure
from stabledub_core.masks.crop_spans import feathered_rect, plan_crop_spans
from helpers.occluded_media import MIC_FROM, occluded, occluded_microphone

GRID = 16
SIZE = 256


@pytest.fixture(scope="module")
def mic_case(media_dir, face_model_path):
    _, track = occluded(media_dir, face_model_path)
    return plan_crop_spans(track, length=16, crop_size=SIZE), occluded_microphone(media_dir, face_model_path), track


def _cell_distance_to(mask_crop: np.ndarray, cells) -> np.ndarray:
    """Distance in crop pixels from each cell's centre to the nearest pixel of a crop mask."""
    ys, xs = np.nonzero(mask_crop)
    step = SIZE / GRID
    out = []
    for row, col in cells:
        cy, cx = (row + 0.5) * step, (col + 0.5) * step
        out.append(np.hypot(xs + 0.5 - cx, ys + 0.5 - cy).min())
    return np.array(out)


def test_microphone_exposes_the_patches_under_it_and_none_far_away(mic_case):
    windows, mic, track = mic_case
    exposed_any = 0
    for window in windows:
        per_frame = exposure.from_occluder(mic, window, GRID, min_fraction=0.2)
        assert len(per_frame) == window.stop - window.start
        x0, y0, x1, y1 = window.box
        for i, patches in zip(range(window.start, window.stop), per_frame):
            if i < MIC_FROM:
                assert patches.cells == []
                continue
            assert len(patches.cells) >= 2
            exposed_any += 1
            mic_crop = cv2.resize(mic[i, y0:y1, x0:x1], (SIZE, SIZE), interpolation=cv2.INTER_AREA) > 0
            # Every exposed patch lies on the microphone (its centre within a patch diagonal of it) ...
            assert _cell_distance_to(mic_crop, patches.cells).max() <= SIZE / GRID * 0.75
            # ... the left cheek and jaw, far from it, stay masked ...
            for index in (58, 172, 136):
                x, y = window.to_crop(track.landmarks[i, index])
                assert (int(y // (SIZE / GRID)), int(x // (SIZE / GRID))) not in patches.cells
            # ... and every patch the microphone covers at least half of is exposed.
            half = exposure.cell_coverage(mic_crop.astype(np.float32), GRID) >= 0.5
            half &= exposure.cell_coverage(window.union_mask, GRID) > 0
            assert patches.to_array()[half].all() and half.any()
            # Applying the exposure keeps the source pixels under the microphone's core.
            mask = exposure.apply(window.union_mask, patches)
            assert (mask[patches.raster(SIZE)] == 0).all()
            assert mask.sum() < window.union_mask.sum()
    assert exposed_any == 75 - MIC_FROM


def test_occluder_input_forms(mic_case):
    windows, mic, _ = mic_case
    window = windows[3]
    full = exposure.from_occluder(mic, window, GRID)
    single = exposure.from_occluder(mic[window.start], window, GRID)
    assert all(p == full[0] for p in single)
    as_uint8 = exposure.from_occluder((mic * 255).astype(np.uint8), window, GRID)
    assert as_uint8 == full
    with pytest.raises(ValueError, match="frames"):
        exposure.from_occluder(mic[:10], window, GRID)
    with pytest.raises(ValueError, match="frame size"):
        exposure.from_occluder(mic[:, :100, :100], window, GRID)


def test_schedule_goes_from_70_to_0_and_is_reproducible():
    for shape in ("linear", "cosine"):
        schedule = exposure.ExposureSchedule(shape=shape)
        rates = [schedule.rate(step, 100) for step in range(100)]
        assert rates[0] == pytest.approx(0.7) and rates[-1] == pytest.approx(0.0)
        assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert exposure.ExposureSchedule(shape="cosine").rate(10, 100) > exposure.ExposureSchedule().rate(10, 100)
    with pytest.raises(ValueError, match="shape"):
        exposure.ExposureSchedule(shape="exponential")

    union = feathered_rect(np.array([60.0, 110.0, 200.0, 220.0]), 12, SIZE)
    candidates = exposure.union_cells(union, GRID)
    first = exposure.from_schedule(union, GRID, 0.7, seed=5)
    assert first == exposure.from_schedule(union, GRID, 0.7, seed=5)
    assert first != exposure.from_schedule(union, GRID, 0.7, seed=6)
    assert len(first.cells) == round(0.7 * candidates.sum())
    assert all(candidates[r, c] for r, c in first.cells)
    counts = [len(exposure.from_schedule(union, GRID, r, seed=1).cells) for r in (0.7, 0.5, 0.3, 0.1, 0.0)]
    assert counts == sorted(counts, reverse=True) and counts[-1] == 0


def test_patch_list_is_json_and_applies_at_crop_and_latent_size():
    patches = exposure.from_list([[3, 4], (3, 5), [3, 4]], grid=GRID)
    assert patches.cells == [(3, 4), (3, 5)]
    again = exposure.ExposedPatches.from_json(json.dumps(json.loads(patches.to_json())))
    assert again == patches
    assert patches.rects()[0] == pytest.approx((4 / 16, 3 / 16, 5 / 16, 4 / 16))
    union = np.ones((512, 512), np.float32)
    mask = exposure.apply(union, patches)
    assert mask[96:128, 128:192].max() == 0 and mask.sum() == 512 * 512 - 2 * 32 * 32
    latent = exposure.to_latent(mask)
    assert latent.shape == (64, 64)
    assert latent[12:16, 16:24].max() == 0 and latent.sum() == 64 * 64 - 2 * 4 * 4
    assert exposure.grid_size(512, patch_size=32) == 16
    painted = np.zeros((100, 100), np.float32)
    painted[50:57, 25:32] = 1  # covers cell (8, 4) of a 16-grid over a 100-pixel box and slivers of its neighbours
    assert exposure.from_crop_mask(painted, 16, min_fraction=0.5).cells == [(8, 4)]
    with pytest.raises(ValueError, match="outside"):
        exposure.from_list([[16, 0]], grid=16)
    with pytest.raises(ValueError, match="JSON"):
        exposure.ExposedPatches.from_json("{grid: 3")
    with pytest.raises(ValueError, match="exactly one"):
        exposure.grid_size(512)

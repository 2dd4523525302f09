"""Detailed/coarse masks, union windows and crop boxes on the real test video."""

from __future__ import annotations

import numpy as np
import pytest

from stabledub_core.masks import mouth_masks, regions
from stabledub_core.masks.boxes import clamp_box
from stabledub_core.masks.config import MaskConfig
from stabledub_core.masks.crop_spans import CropSpanError, feathered_rect, plan_crop_spans
from helpers.occluded_media import occluded, with_missing, with_status


@pytest.fixture(scope="module")
def clip(media_dir, face_model_path):
    return occluded(media_dir, face_model_path)


def test_coarse_mask_contains_detailed_mask_and_stays_in_its_extents(clip):
    _, track = clip
    size = track.frame_size
    for i in (0, 40, 74):
        detailed = mouth_masks.rasterize(track.landmarks[i], size)
        coarse = mouth_masks.rasterize(track.landmarks[i], size, dilation=0.06)
        assert detailed.sum() > 2000
        assert (coarse >= detailed).all() and coarse.sum() > 1.3 * detailed.sum()
        x0, y0, x1, y1 = mouth_masks.coarse_extents(track.landmarks[i:i + 1], 0.06)[0]
        ys, xs = np.nonzero(coarse)
        assert xs.min() >= np.floor(x0) - 1 and xs.max() <= np.ceil(x1) + 1
        assert ys.min() >= np.floor(y0) - 1 and ys.max() <= np.ceil(y1) + 1
        # The detailed mask covers the lips and reaches the chin (152) but not the eyes.
        centre = track.landmarks[i, list(regions.LIPS_OUTER)].mean(axis=0)
        for index in (*regions.MOUTH_CORNERS, *regions.LIP_CENTRES, 152):
            # Contour points sit on the polygon's edge: test a point just inside, and the point itself in Mc.
            x, y = np.round(0.9 * track.landmarks[i, index] + 0.1 * centre).astype(int)
            assert detailed[y, x] == 1
            x, y = np.round(track.landmarks[i, index]).astype(int)
            assert coarse[y, x] == 1
        x, y = np.round(track.landmarks[i, 159]).astype(int)  # upper eyelid
        assert coarse[y, x] == 0


def test_union_mask_is_one_per_window_and_contains_every_frames_masks(clip):
    _, track = clip
    windows = plan_crop_spans(track, length=16, crop_size=256)
    assert [(w.start, w.stop) for w in windows] == [(0, 16), (16, 32), (32, 48), (48, 64), (64, 75)]
    for window in windows:
        assert window.union_mask.shape == (256, 256) and window.union_mask.dtype == np.float32
        core = window.union_mask >= 1 - 1e-6
        assert window.coarse_masks.shape == (window.stop - window.start, 256, 256)
        for i in range(window.stop - window.start):
            detailed = mouth_masks.rasterize(window.landmarks[i], (256, 256))
            assert detailed.sum() > 0
            assert core[detailed > 0].all()
            assert (window.union_mask[window.coarse_masks[i] > 0] > 0.5).all()
        # Blurred edges: a soft ramp exists and the mask is 0 far away.
        assert ((window.union_mask > 0.05) & (window.union_mask < 0.95)).sum() > 200
        assert window.union_mask[0, 0] == 0


def test_boxes_are_square_inside_the_frame_contain_mu_and_move_smoothly(clip):
    _, track = clip
    height, width = track.frame_size
    smooth = plan_crop_spans(track, length=8, crop_size=256)
    raw = plan_crop_spans(track, length=8, crop_size=256, config=MaskConfig(box_smoothing=0.0))
    for window in smooth:
        x0, y0, x1, y1 = window.box
        assert x1 - x0 == y1 - y0 and 0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height
        ux0, uy0, ux1, uy1 = window.union_rect
        f = window.feather
        assert x0 <= ux0 - f and y0 <= max(uy0 - f, 0) and x1 >= ux1 + f and y1 >= uy1 + f

    def jumps(windows):
        boxes = np.array([w.box for w in windows], float)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        return np.abs(np.diff(centres, axis=0)).sum(axis=1)

    assert jumps(smooth).max() < jumps(raw).max()
    assert jumps(smooth).sum() <= jumps(raw).sum()


def test_groups_planned_separately_continue_smoothly_from_the_previous_box(clip):
    _, track = clip
    first = plan_crop_spans(track[0:32], length=8, crop_size=64)
    cold = plan_crop_spans(track[32:64], length=8, crop_size=64)
    warm = plan_crop_spans(track[32:64], length=8, crop_size=64, previous_box=first[-1].box)

    def centre(box):
        return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])

    jump_cold = np.abs(centre(cold[0].box) - centre(first[-1].box)).sum()
    jump_warm = np.abs(centre(warm[0].box) - centre(first[-1].box)).sum()
    assert jump_warm < 0.7 * jump_cold


def test_missing_frames_are_left_out_and_an_empty_window_passes_through(clip):
    _, track = clip
    missing = [3, 4, 5] + list(range(16, 32))
    windows = plan_crop_spans(with_missing(track, missing), length=16, crop_size=128)
    assert not windows[0].active[[3, 4, 5]].any() and windows[0].active[[0, 1, 2, 6]].all()
    expected = mouth_masks.coarse_extents(track.landmarks[[0, 1, 2, *range(6, 16)]], MaskConfig().coarse_dilation)
    np.testing.assert_allclose(windows[0].union_rect, [*expected[:, :2].min(0), *expected[:, 2:].max(0)], rtol=1e-5)
    assert (windows[0].coarse_masks[3] == 0).all() and windows[0].coarse_masks[2].sum() > 0
    assert windows[1].passthrough and (windows[1].union_mask == 0).all()
    assert not windows[0].passthrough and not windows[2].passthrough
    # The pass-through window's box lies between its neighbours', so crops stay continuous.
    def centre_side(box):
        return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0]])

    neighbours = np.stack([centre_side(windows[0].box), centre_side(windows[2].box)])
    middle = centre_side(windows[1].box)
    assert ((neighbours.min(0) - 1 <= middle) & (middle <= neighbours.max(0) + 1)).all()
    everything = plan_crop_spans(with_missing(track, list(range(75))), length=16, crop_size=128)
    assert all(w.passthrough for w in everything)


@pytest.mark.parametrize("frame_size, scale, offset", [
    ((397, 513), 0.7, (60.0, 20.0)),      # odd sizes, H x W
    ((1280, 720), 1.2, (50.0, 300.0)),    # portrait
    ((2160, 3840), 4.0, (1500.0, 150.0)), # 4K
    ((120, 90), 0.5, (-60.0, -20.0)),     # smaller than the wanted box
])
def test_any_frame_size(clip, frame_size, scale, offset):
    _, track = clip
    moved = with_status(track, landmarks=track.landmarks * scale + np.array(offset, np.float32),
                        frame_size=frame_size)
    windows = plan_crop_spans(moved, length=16, crop_size=64)
    height, width = frame_size
    for window in windows:
        x0, y0, x1, y1 = window.box
        assert x1 - x0 == y1 - y0 > 0 and 0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height
        assert window.union_mask.shape == (64, 64) and window.union_mask.max() == 1
    if frame_size == (120, 90):
        assert windows[0].box[2] - windows[0].box[0] == 90  # shrunk to the frame's shorter side


def test_overlapping_windows_split_ownership(clip):
    _, track = clip
    windows = plan_crop_spans(track, length=16, overlap=4, crop_size=64)
    assert [(w.start, w.stop) for w in windows][:2] == [(0, 16), (12, 28)]
    owned = np.concatenate([np.arange(w.own_start, w.own_stop) for w in windows])
    np.testing.assert_array_equal(owned, np.arange(75))
    assert windows[0].own_stop == 14


def test_bad_input_is_rejected(clip):
    _, track = clip
    with pytest.raises(CropSpanError, match="overlap"):
        plan_crop_spans(track, length=8, overlap=8)
    with pytest.raises(ValueError, match="478"):
        mouth_masks.coarse_extents(np.zeros((3, 68, 2)), 0.1)
    with pytest.raises(ValueError, match="box_scale"):
        MaskConfig(box_scale=0.5)


def test_feathered_rect_and_clamp_box_geometry():
    mask = feathered_rect(np.array([10.0, 20.0, 30.0, 40.0]), 5.0, 64)
    assert mask[25, 15] == 1 and mask[25, 2] == 0
    assert 0 < mask[30, 32] < 1 and mask[30, 32] > mask[30, 34]  # falls off outside the edge at x = 30
    assert clamp_box(5, 5, 40, (100, 60)) == (0, 0, 40, 40)
    assert clamp_box(50, 95, 40, (100, 60)) == (20, 60, 60, 100)
    assert clamp_box(50, 50, 500, (100, 60)) == (0, 20, 60, 80)

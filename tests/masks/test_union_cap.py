"""The union mask Mu under fast motion: its growth is capped by motion-compensated per-frame masks (issue #14.3).

The fast clip is the real track of ``face_occluded.mp4`` (its jaw motion included) with the face translated 34 px a
frame, as a face moving fast across the frame is; slow clips (the real clip, 1 px a frame) must be planned exactly as
before, which ``max_growth=100`` reproduces (no span of them grows anywhere near 100x).
"""

from __future__ import annotations

import numpy as np
import pytest

from stabledub_core.errors import OptionError
from stabledub_core.face.track import FaceTrack
from stabledub_core.masks import mouth_masks
from stabledub_core.masks.config import MaskConfig
from stabledub_core.masks.crop_spans import (
    CropPlan,
    compensated_rects,
    growth_of,
    plan_crop_spans,
    single_frame_span,
)
from stabledub_core.pipeline.options import MaskOptions
from helpers.occluded_media import occluded

WINDOW, CROP, STEP = 16, 256, 34
UNCAPPED = MaskConfig(max_growth=100.0)  # the planning before the cap (nothing here grows 100x)


@pytest.fixture(scope="module")
def track(media_dir, face_model_path) -> FaceTrack:
    return occluded(media_dir, face_model_path)[1]


def moving(track: FaceTrack, step: float, frames: int = WINDOW) -> FaceTrack:
    """The first ``frames`` frames of a track with the face translated ``step`` px a frame to the right."""
    height, width = track.frame_size
    shift = np.zeros((frames, 1, 2), np.float32)
    shift[:, 0, 0] = step * np.arange(frames)
    return FaceTrack(track.landmarks[:frames] + shift, track.status[:frames].copy(),
                     (height, width + int(np.ceil(step * (frames - 1)))))


def source_area(span, mask: np.ndarray) -> float:
    """Pixels of a crop-coordinate mask above 0.5, in source pixels."""
    side = span.box[2] - span.box[0]
    return float((mask > 0.5).sum()) * (side / span.crop_size) ** 2


def test_fast_motion_masks_stay_within_the_bound_and_follow_the_face(track):
    fast = moving(track, STEP)
    before = plan_crop_spans(fast, WINDOW, crop_size=CROP, config=UNCAPPED)[0]
    (span,) = plan_crop_spans(fast, WINDOW, crop_size=CROP)
    assert not before.capped and span.capped and span.growth > 5
    assert span.box == before.box and np.array_equal(span.union_mask, before.union_mask)  # box and Mu unchanged
    own = mouth_masks.coarse_extents(fast.landmarks, 0.06)  # (16, 4) each frame's Mc rectangle, source px
    limit = 1.5 * float(((own[:, 2] - own[:, 0]) * (own[:, 3] - own[:, 1])).max())
    rects = span.frame_rects
    assert (((rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])) <= limit * (1 + 1e-6)).all()
    wide = source_area(before, before.union_mask)
    for k in range(WINDOW):
        mask = span.mask_at(k)
        area = source_area(span, mask)
        assert area < wide / 4, (k, area, wide)
        assert (mask[span.coarse_masks[k] > 0] > 0.5).all()  # the frame's own Mc is always inpainted
        assert np.all(rects[k, :2] <= own[k, :2] + 1e-4) and np.all(rects[k, 2:] >= own[k, 2:] - 1e-4)
    # One shape relative to the face, moving with it: the rectangles are translates of each other by the anchor.
    anchors = mouth_masks.face_anchor(fast.landmarks).astype(np.float64)  # (16, 2)
    local = rects - np.tile(anchors, 2)
    assert np.abs(local - local[0]).max() < 1e-3
    assert single_frame_span(span, 5).union_mask is span.mask_at(5)  # per-frame occluder exposure sees it too


def test_the_motion_compensated_union_keeps_every_jaw_position_of_the_window(track):
    fast = moving(track, STEP)
    (span,) = plan_crop_spans(fast, WINDOW, crop_size=CROP, config=MaskConfig(max_growth=3.0))
    own = mouth_masks.coarse_extents(fast.landmarks, 0.06).astype(np.float64)
    anchors = np.tile(mouth_masks.face_anchor(fast.landmarks).astype(np.float64), 2)
    for k in range(WINDOW):  # under a loose bound nothing is shrunk: frame k's mask holds every frame's Mc, aligned
        aligned = own - anchors + anchors[k]
        assert (span.frame_rects[k, :2] <= aligned[:, :2].min(axis=0) + 1e-4).all()
        assert (span.frame_rects[k, 2:] >= aligned[:, 2:].max(axis=0) - 1e-4).all()


@pytest.mark.parametrize("step", [0.0, 1.0])
def test_slow_and_still_clips_are_planned_byte_identically(track, step):
    clip = track if step == 0 else moving(track, step, frames=48)
    for length in (8, 16, 32):
        now = plan_crop_spans(clip, length, crop_size=CROP)
        old = plan_crop_spans(clip, length, crop_size=CROP, config=UNCAPPED)
        assert len(now) == len(old)
        for a, b in zip(now, old):
            assert not a.capped and a.growth < 1.5 and a.box == b.box
            assert a.union_mask.tobytes() == b.union_mask.tobytes()
            assert all(a.mask_at(k) is a.union_mask for k in range(a.stop - a.start))


def test_compensated_rects_shrink_a_turning_head_to_the_bound():
    # A head turning: the mouth slides +-30 px relative to the anchor, which alignment on the anchor cannot remove.
    centres = np.array([-30.0, -15, 0, 15, 30])  # (5,)
    extents = np.stack([centres - 20, np.full(5, 10.0), centres + 20, np.full(5, 40.0)], axis=1)  # (5, 4)
    anchors = np.zeros((5, 2))
    rects = compensated_rects(extents, anchors, 1.5)
    single = ((extents[:, 2] - extents[:, 0]) * (extents[:, 3] - extents[:, 1])).max()
    areas = (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])
    assert np.allclose(areas, 1.5 * single)  # the aligned union (100 x 30) is 2.5x: every frame is shrunk to 1.5x
    assert np.all(rects[:, :2] <= extents[:, :2]) and np.all(rects[:, 2:] >= extents[:, 2:])
    assert np.allclose(compensated_rects(extents, anchors, 3.0), [[-50, 10, 50, 40]] * 5)  # within a loose bound
    assert growth_of(np.array([-60.0, -20, 60, 20]), np.array([[-30.0, -20, 30, 20]])) == 2.0


def test_the_plan_counts_capped_windows_once(track):
    fast = moving(track, STEP, frames=48)
    still = track.landmarks[:48]
    landmarks = fast.landmarks.copy()
    landmarks[16:32] = still[16:32] + np.float32([STEP * 15, 0])  # the middle window holds still
    clip = FaceTrack(landmarks, fast.status, fast.frame_size)
    plan = CropPlan(clip, CROP, WINDOW, MaskConfig(), keep_all=False)
    for i in list(range(48)) + list(range(40, 48)):  # frames asked again are not counted again
        plan.span_at(i)
    caps = plan.caps
    assert (caps.spans, caps.frames, caps.total_spans, caps.limit) == (2, 32, 3, 1.5) and caps.widest > 5
    assert caps.as_dict()["capped_windows"] == 2
    assert CropPlan(track, CROP, WINDOW).caps.spans == 0


def test_the_bound_is_an_option_checked_by_name():
    assert MaskOptions().mask_config().max_growth == MaskConfig().max_growth == 1.5
    assert MaskOptions(max_mask_growth=3.0).mask_config().max_growth == 3.0
    with pytest.raises(OptionError, match="max_mask_growth must be between 1.0 and 100.0"):
        MaskOptions(max_mask_growth=0.5)
    with pytest.raises(OptionError, match="max_growth"):
        MaskConfig(max_growth=0.9)

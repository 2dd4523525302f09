"""One-Euro smoothing, gap filling, face selection and search geometry (no MediaPipe)."""

import numpy as np
import pytest

from stabledub_core.face import FaceSelection, TrackStatus
from stabledub_core.face.gaps import GapFiller
from stabledub_core.face.search import FineSearchConfig, dedup_faces, tile_boxes, tile_levels, zoom_box
from stabledub_core.face.selection import FaceSelector, is_continuation
from stabledub_core.face.smoothing import OneEuroConfig, OneEuroFilter, smooth_trajectory

FPS = 25.0


def jittered_step(step: float, sigma: float, seed: int = 0, frames: int = 100, at: int = 50):
    """A still point that jumps by ``step`` at frame ``at``, plus Gaussian jitter. Returns clean, noisy (F, 1, 2)."""
    clean = np.zeros((frames, 1, 2))
    clean[at:, 0, 1] = step
    noisy = clean + np.random.default_rng(seed).normal(0, sigma, clean.shape)
    return clean, noisy


def jitter(x: np.ndarray) -> float:
    return float(np.std(np.diff(x, axis=0)))


@pytest.mark.parametrize("mouth", [False, True])
def test_one_euro_removes_jitter_without_lagging_a_fast_step(mouth):
    # Units are face sizes (scale=1): jitter of 1 % of the inter-ocular distance, a 20 % jump in one frame.
    clean, noisy = jittered_step(step=0.2, sigma=0.01)
    times = np.arange(len(clean)) / FPS
    out = smooth_trajectory(noisy, times, mouth_points=np.array([0]) if mouth else None, scale=1.0)
    still = slice(5, 48)
    assert jitter(out[still]) < 0.5 * jitter(noisy[still])
    assert np.abs(out[still] - clean[still]).mean() < np.abs(noisy[still] - clean[still]).mean()
    error = np.abs(clean[:, 0, 1] - out[:, 0, 1]) / 0.2
    assert error[51] < 0.15 and error[52:].max() < 0.2  # at most about one frame behind


def test_one_euro_follows_slow_motion_and_resets():
    times = np.arange(50) / FPS
    ramp = np.zeros((50, 3, 2))
    ramp[:, :, 0] = 0.5 * times[:, None]  # 0.5 face sizes per second
    out = smooth_trajectory(ramp, times, mouth_points=None, scale=1.0)
    assert np.abs(out[10:] - ramp[10:]).max() < 0.02
    filt = OneEuroFilter(OneEuroConfig(), num_points=3, mouth_points=None)
    filt(ramp[0], 0.0, 1.0)
    filt.reset()
    assert np.array_equal(filt(ramp[40] + 5, 1.0, 1.0), (ramp[40] + 5).astype(np.float32))
    with pytest.raises(ValueError, match="increasing"):
        filt(ramp[0], 1.0, 1.0)


def test_mouth_points_are_more_responsive_than_the_rest():
    clean, noisy = jittered_step(step=0.1, sigma=0.003)
    points = np.repeat(noisy, 2, axis=1)  # point 0 = face, point 1 = mouth
    out = smooth_trajectory(points, np.arange(len(points)) / FPS, mouth_points=np.array([1]), scale=1.0)
    lag = np.abs(out[50:53, :, 1] - 0.1).sum(axis=0)
    assert lag[1] < lag[0]


def test_gap_filler_interpolates_short_gaps_and_marks_long_ones():
    filler = GapFiller(max_gap=2, num_points=1)
    seq = [0.0, None, None, 3.0, None, None, None, 7.0, None]
    out = []
    for i, x in enumerate(seq):
        out += filler.push(i, i / FPS, None if x is None else np.array([[x, x]]))
        held = i + 1 - len(out)
        assert held <= filler.lookahead
    out += filler.flush()
    assert [e.index for e in out] == list(range(len(seq)))
    assert [e.status for e in out] == [TrackStatus.DETECTED, TrackStatus.INTERPOLATED, TrackStatus.INTERPOLATED,
                                       TrackStatus.DETECTED, TrackStatus.MISSING, TrackStatus.MISSING,
                                       TrackStatus.MISSING, TrackStatus.DETECTED, TrackStatus.MISSING]
    assert np.allclose([out[1].landmarks[0, 0], out[2].landmarks[0, 0]], [1.0, 2.0])
    assert np.isnan(out[4].landmarks).all()


def test_gap_filler_resolves_held_frames_as_a_new_track():
    filler = GapFiller(max_gap=3, num_points=1)
    filler.push(0, 0.0, np.zeros((1, 2)))
    assert filler.push(1, 0.04, None) == [] and filler.push(2, 0.08, None) == []
    out = filler.resolve([np.full((1, 2), 5.0)])  # frame 2 showed the new track's face
    assert [e.status for e in out] == [TrackStatus.MISSING, TrackStatus.DETECTED] and out[1].landmarks[0, 0] == 5
    filler.push(3, 0.12, None)
    assert filler.push(4, 0.16, np.full((1, 2), 7.0))[0].status == TrackStatus.INTERPOLATED  # from the new track


def test_gap_filler_interpolates_in_time_for_variable_frame_rates():
    filler = GapFiller(max_gap=1, num_points=1)
    filler.push(0, 0.0, np.zeros((1, 2)))
    filler.push(1, 0.3, None)
    out = filler.push(2, 0.4, np.ones((1, 2)))
    assert out[0].status == TrackStatus.INTERPOLATED and np.allclose(out[0].landmarks, 0.75)


def faces_at(*centres_and_sizes) -> np.ndarray:
    """Synthetic (N, 478, 2) faces: points spread over a square of the given size around each centre."""
    unit = np.random.default_rng(0).uniform(-0.5, 0.5, (478, 2))
    unit[:2] = [[-0.5, -0.5], [0.5, 0.5]]
    return np.stack([np.array(c) + s * unit for c, s in centres_and_sizes]).astype(np.float32)


def test_selection_strategies():
    faces = faces_at(((500, 100), 50), ((100, 100), 80), ((300, 100), 120))
    assert FaceSelector(FaceSelection.LARGEST).select(faces, None) == 2
    assert [FaceSelector(FaceSelection.INDEX, index=i).select(faces, None) for i in range(3)] == [1, 2, 0]
    assert FaceSelector(FaceSelection.INDEX, index=3).select(faces, None) is None
    nearest = FaceSelector(FaceSelection.NEAREST)
    assert nearest.select(faces, None) == 2  # no previous face: the initial strategy (LARGEST)
    assert nearest.select(faces, faces_at(((480, 110), 50))[0]) == 0
    assert nearest.select(faces, faces_at(((800, 400), 50))[0]) == 0
    assert FaceSelector(FaceSelection.LARGEST).select(faces[:0], None) is None
    with pytest.raises(ValueError, match="initial"):
        FaceSelector(FaceSelection.NEAREST, initial=FaceSelection.NEAREST)
    assert FaceSelector("index", index=1).strategy is FaceSelection.INDEX


def test_continuity_rejects_jumps_and_sudden_size_changes():
    previous = faces_at(((100, 100), 50))[0]
    assert is_continuation(faces_at(((130, 110), 55))[0], previous)
    assert not is_continuation(faces_at(((200, 100), 50))[0], previous)  # two face sizes away
    assert not is_continuation(faces_at(((100, 100), 90))[0], previous)  # 1.8 x larger in one frame
    assert is_continuation(faces_at(((200, 100), 50))[0], previous, max_jump=2.5)


@pytest.mark.parametrize("size", [(1920, 1080), (1080, 1920), (333, 517)])
def test_tiles_cover_the_frame_with_overlap(size):
    config = FineSearchConfig()
    levels = tile_levels(size, config)
    assert levels[0] == min(size) and levels[-1] >= config.min_tile // 2 and levels == sorted(levels, reverse=True)
    for tile in levels:
        covered = np.zeros(size, int)
        for x0, y0, x1, y1 in tile_boxes(size, tile, config.tile_overlap):
            assert 0 <= x0 < x1 <= size[1] and 0 <= y0 < y1 <= size[0]
            covered[y0:y1, x0:x1] += 1
        assert covered.min() >= 1
        # Any face up to half a tile wide lies wholly inside some tile.
        h = tile // 2
        boxes = np.array(tile_boxes(size, tile, config.tile_overlap))
        for cx, cy in [(h // 2 + 1, h // 2 + 1), (size[1] // 2, size[0] // 3), (size[1] - h // 2 - 1, size[0] - h)]:
            inside = ((boxes[:, 0] <= cx - h // 2) & (boxes[:, 2] >= cx + h // 2)
                      & (boxes[:, 1] <= cy - h // 2) & (boxes[:, 3] >= cy + h // 2))
            assert inside.any()


def test_zoom_box_and_dedup():
    face = faces_at(((100, 50), 40))[0]
    x0, y0, x1, y1 = zoom_box(face, (200, 300), zoom=3.0)
    assert (x0, y0) == (40, 0) and x1 == 160 and y1 == 110  # clamped at the top
    twice = np.concatenate([faces_at(((100, 50), 40)), faces_at(((103, 52), 40)), faces_at(((200, 50), 40))])
    assert len(dedup_faces(twice, 0.5)) == 2

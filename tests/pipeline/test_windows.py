import pytest
import torch

from helpers.sampler_stubs import TargetDenoiser, make_conditions, smooth_target
from stabledub_core.pipeline.sampler import SamplerConfig, sample_clip
from stabledub_core.pipeline.windows import (
    ChunkStitcher,
    FrameWindow,
    SamplerWindowError,
    iter_window_batches,
    plan_chunks,
    plan_frame_windows,
    ramp,
    window_weights,
)


@pytest.mark.parametrize("frames", [1, 5, 16, 17, 28, 29, 70, 75, 301])
def test_windows_cover_every_frame_with_full_length(frames):
    windows = plan_frame_windows(frames, 16, 4)
    covered = torch.zeros(frames, dtype=torch.int64)
    for w in windows:
        covered[w.slice] += 1
    assert (covered > 0).all()
    assert windows[0].start == 0 and windows[-1].stop == frames
    assert all(w.length == min(16, frames) for w in windows)
    assert all(b.start - a.start <= 12 for a, b in zip(windows, windows[1:]))  # overlap >= 4


def test_window_plan_examples():
    assert plan_frame_windows(1) == [FrameWindow(0, 1)]
    assert plan_frame_windows(17, 16, 4) == [FrameWindow(0, 16), FrameWindow(1, 17)]
    assert plan_frame_windows(40, 16, 4) == [FrameWindow(0, 16), FrameWindow(12, 28), FrameWindow(24, 40)]
    with pytest.raises(SamplerWindowError, match="overlap"):
        plan_frame_windows(40, 16, 16)
    with pytest.raises(SamplerWindowError, match="at least one frame"):
        plan_frame_windows(0)


def test_ramp_and_weights():
    torch.testing.assert_close(ramp(6, 2), torch.tensor([1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3]))
    torch.testing.assert_close(ramp(4, 2, left=False), torch.tensor([1, 1, 2 / 3, 1 / 3]))
    weights = window_weights(plan_frame_windows(40, 16, 4), 4)
    assert weights[0][0] == 1 and weights[-1][-1] == 1 and weights[1][0] < 1
    assert all((w > 0).all() for w in weights)


def test_window_batches_group_equal_lengths():
    windows = [FrameWindow(0, 16), FrameWindow(12, 28), FrameWindow(24, 40)]
    assert list(iter_window_batches(windows, 2)) == [[0, 1], [2]]
    with pytest.raises(SamplerWindowError):
        list(iter_window_batches(windows, 0))


@pytest.mark.parametrize("frames, per_chunk", [(10, 1), (61, 2), (70, 1), (75, 3), (300, 4)])
def test_chunks_follow_window_starts_and_bound_memory(frames, per_chunk):
    chunks = plan_chunks(frames, per_chunk, 16, 4)
    starts = {w.start for w in plan_frame_windows(frames, 16, 4)}
    assert chunks[0].start == 0 and chunks[-1].stop == frames
    assert all(c.start in starts for c in chunks)
    assert all(c.length <= per_chunk * 12 + 4 for c in chunks)
    for prev, nxt in zip(chunks, chunks[1:]):
        assert nxt.blend == prev.stop - nxt.start >= 4


def test_stitcher_reassembles_and_crossfades():
    chunks = plan_chunks(45, 1, 16, 4)
    clip = torch.arange(45, dtype=torch.float32).view(-1, 1) * torch.ones(1, 3)
    stitcher = ChunkStitcher(chunks)
    out = []
    expected_start = 0
    for c in chunks:
        start, frames = stitcher.push(clip[c.start:c.stop] + (1.0 if c.start else 0.0))  # chunks disagree by 1
        assert start == expected_start
        expected_start += len(frames)
        out.append(frames)
    stitcher.finish()
    out = torch.cat(out)
    assert out.shape == clip.shape
    step = out[:, 0].diff()
    assert step.max() <= 1.0 + 1.0 / 5 + 1e-6  # the 1.0 disagreement is spread over the 4 shared frames
    with pytest.raises(SamplerWindowError, match="already pushed"):
        stitcher.push(clip[:16])
    with pytest.raises(SamplerWindowError, match="never pushed"):
        ChunkStitcher(chunks).finish()




def test_identity_model_no_seam_any_length():
    target = smooth_target(70)
    cond = make_conditions(70, target=target)
    out = sample_clip(TargetDenoiser(), cond, SamplerConfig(num_inference_steps=5, scheduler="euler",
                                                            scale_audio=1.0, scale_habit=1.0))
    assert out.shape[0] == 70
    steps = out.diff(dim=0)
    torch.testing.assert_close(steps, target.diff(dim=0), atol=1e-3, rtol=0)  # uniform steps: no seam


def test_overlapping_windows_remove_the_seam_of_disagreeing_windows():
    # each window pulls its frames towards its own mean target: neighbouring windows disagree by
    # beta * stride * 0.05, a seam when windows are tiled without overlap
    frames = 70
    target = smooth_target(frames)
    cond = make_conditions(frames, target=target)
    model = TargetDenoiser(beta=0.5)

    def run(overlap):
        cfg = SamplerConfig(num_inference_steps=5, scheduler="euler", scale_audio=1.0, scale_habit=1.0,
                            overlap=overlap, shared_noise=1.0)
        out = sample_clip(model, cond, cfg)
        assert out.shape[0] == frames
        step = (out - target).diff(dim=0).abs().amax(dim=(1, 2, 3))  # (frames - 1,)
        windows = plan_frame_windows(frames, 16, overlap)
        core = torch.ones(frames - 1, dtype=torch.bool)  # steps inside exactly one window
        for a, b in zip(windows, windows[1:]):
            core[max(b.start - 1, 0):a.stop] = False
        return step.max(), step[core].max()

    tiled_max, tiled_inside = run(overlap=0)
    blended_max, blended_inside = run(overlap=8)
    assert tiled_max > 5 * tiled_inside  # the test model does produce seams
    assert blended_max <= 1.01 * blended_inside  # averaging at every step: edges no worse than interiors
    assert blended_max < tiled_max / 3

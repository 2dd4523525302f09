"""The mouth-state estimator against the renderer's truth: drawn frames, an H.264 round trip, blurred frames (what a
dub looks like), sweeps, occlusion."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from stabledub_core.errors import InvalidInputError
from stabledub_core.media.clip import read_clip, write_clip
from stabledub_core.synthetic.avatar import build_avatar, sample_avatar
from stabledub_core.synthetic.estimator import estimate_clip, estimate_frame
from stabledub_core.synthetic.occluders import sample_occluder
from stabledub_core.synthetic.render import render_frame
from stabledub_core.synthetic.world import render_speech

SEEDS = (40, 41, 42, 43)
FIELDS = ("opening", "width", "rounding")


def errors(clip, est) -> tuple[np.ndarray, np.ndarray]:
    """``(correlation (3,), mean absolute error (3,))`` of the estimate against the truth over valid frames."""
    truth = clip.states.as_array()[est.valid, :3]
    guess = np.stack([getattr(est, name) for name in FIELDS], 1)[est.valid]
    corr = np.array([np.corrcoef(truth[:, i], guess[:, i])[0, 1] for i in range(3)])
    return corr, np.abs(truth - guess).mean(0)


@pytest.fixture(scope="module")
def clips(speech):
    waveform, rate = speech
    return [render_speech(sample_avatar(seed), waveform[:, int(i * rate):], rate, 25, max_seconds=1.6)
            for i, seed in enumerate(SEEDS)]


def test_estimates_the_drawn_mouth_state(clips):
    truth, guess = [], []
    for clip in clips:
        est = estimate_clip(clip.frames, clip.rendered.mouth_poses, clip.palette)
        assert est.valid.all()
        truth.append(clip.states.as_array()[:, :3])
        guess.append(np.stack([getattr(est, name) for name in FIELDS], 1))
    truth, guess = np.concatenate(truth), np.concatenate(guess)
    corr = [np.corrcoef(truth[:, i], guess[:, i])[0, 1] for i in range(3)]
    error = np.abs(truth - guess).mean(0)
    print("estimator on drawn frames: corr", np.round(corr, 3), "mae", np.round(error, 3))
    # the width is the loosest: its outline against the skin is low in contrast, so small mismatches of the
    # redrawn mouth (antialiasing, the inpainted skin) move it most
    assert corr[0] > 0.99 and corr[1] > 0.75 and corr[2] > 0.95
    assert error[0] < 0.03 and error[1] < 0.1 and error[2] < 0.06


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_estimates_blurred_frames(clips, sigma):
    """A Gaussian blur of sigma frame pixels (the mouth's half-width is about 20): the softening an autoencoder or a
    sampler gives a dub. The opening, the sync measure's reading, must survive it."""
    truth, guess = [], []
    for clip in clips:
        frames = np.stack([cv2.GaussianBlur(frame, (0, 0), sigma) for frame in clip.frames])
        est = estimate_clip(frames, clip.rendered.mouth_poses, clip.palette)
        truth.append(clip.states.as_array()[:, :3])
        guess.append(np.stack([getattr(est, name) for name in FIELDS], 1))
    truth, guess = np.concatenate(truth), np.concatenate(guess)
    corr = [np.corrcoef(truth[:, i], guess[:, i])[0, 1] for i in range(3)]
    error = np.abs(truth - guess).mean(0)
    print(f"estimator on frames blurred by sigma {sigma}: corr", np.round(corr, 3), "mae", np.round(error, 3))
    assert corr[0] > 0.97 and error[0] < 0.06
    assert corr[2] > 0.7 and error[1] < 0.15 and error[2] < 0.12


def test_estimates_after_an_h264_round_trip(clips, tmp_path):
    clip = clips[0]
    video = write_clip(tmp_path / "clip.mp4", clip.frames, clip.fps)
    est = estimate_clip(read_clip(video).frames, clip.rendered.mouth_poses, clip.palette)
    corr, error = errors(clip, est)
    print("estimator after H.264 (crf 18): corr", np.round(corr, 3), "mae", np.round(error, 3))
    assert corr[0] > 0.9 and error[0] < 0.08
    assert error[1] < 0.12 and error[2] < 0.15


def test_sweeps_recover_each_parameter():
    avatar = build_avatar(sample_avatar(44))
    for name, values, base in (("opening", np.linspace(0, 1, 6), {"width": 0.5, "rounding": 0.3}),
                               ("width", np.linspace(0, 1, 6), {"opening": 0.4, "rounding": 0.2}),
                               ("rounding", np.linspace(0, 1, 6), {"opening": 0.4, "width": 0.5})):
        found = []
        for value in values:
            state = {"opening": 0.0, "width": 0.0, "rounding": 0.0, "teeth": 0.5, "tongue": 0.5, **base,
                     name: float(value)}
            frame, _, pose, _ = render_frame(avatar, state, 0.7)
            found.append(estimate_frame(frame, pose, avatar.lit_palette)[FIELDS.index(name)])
        assert np.all(np.diff(found) > -0.03) and found[-1] - found[0] > 0.7, (name, found)  # monotonic
        assert np.abs(np.array(found) - values).max() < 0.15, (name, found)


def test_habits_show_in_the_pixels(speech):
    waveform, rate = speech
    estimates = {}
    for archetype in ("wide", "pucker"):
        clip = render_speech(sample_avatar(46, archetype=archetype), waveform, rate, 25, max_seconds=1.2)
        estimates[archetype] = estimate_clip(clip.frames, clip.rendered.mouth_poses, clip.palette)
    assert estimates["wide"].width.mean() > estimates["pucker"].width.mean() + 0.2
    assert estimates["pucker"].rounding.mean() > estimates["wide"].rounding.mean() + 0.15


def test_occluded_frames_are_invalid(speech):
    waveform, rate = speech
    avatar = sample_avatar(45)
    spec = dataclasses.replace(sample_occluder(np.random.default_rng(1), 1.0, avatar.skin, "microphone"),
                               start_s=0.4, end_s=0.8)
    clip = render_speech(avatar, waveform, rate, 25, spec, max_seconds=1.0)
    est = estimate_clip(clip.frames, clip.rendered.mouth_poses, clip.palette, clip.rendered.occluder_masks)
    covered = clip.rendered.occluder_masks.any(axis=(1, 2))
    assert np.array_equal(est.valid, ~covered)
    assert np.isnan(est.opening[covered]).all() and not np.isnan(est.opening[~covered]).any()


def test_bad_inputs_raise_clear_errors(clips):
    clip = clips[0]
    with pytest.raises(InvalidInputError):
        estimate_clip(clip.frames, clip.rendered.mouth_poses[:-1], clip.palette)
    with pytest.raises(InvalidInputError):
        estimate_frame(clip.frames[0].astype(np.float32), clip.rendered.mouth_poses[0], clip.palette)
    with pytest.raises(InvalidInputError):
        estimate_frame(clip.frames[0], [10.0, 10.0, 0.0, 0.0], clip.palette)

"""The world benchmark: cases, the estimator against the truth, a real dub measured end to end."""

import dataclasses

import numpy as np
import pytest
import torch

from helpers.repo_media import ASSETS
from stabledub_core.evaluate.world_benchmark import (
    MIN_VALID_FRAMES, autoencoder_ceiling, evaluate_clip, habit_blind_truth, make_cases, mean_metrics,
    reference_with_habit, state_errors, transfer_truth)
from stabledub_core.models.checkpoint import load_checkpoint
from stabledub_core.models.config import get_preset
from stabledub_core.models.stabledub import StableDub
from stabledub_core.pipeline.options import DubOptions
from stabledub_core.synthetic.habit import mean_habit

FACE_MODEL = ASSETS / "face_landmarker.task"


def test_cases_dub_each_clip_with_speech_it_was_not_rendered_with(eval_world):
    world, speech = eval_world
    cases = make_cases(world, speech)
    assert [c.name for c in cases] == ["clip_00000", "clip_00001"]
    assert [c.speech.name for c in cases] == ["b.wav", "c.wav"]
    assert all(c.truth.rendered.frames.shape == c.frames.shape for c in cases)
    assert [c.occluder is not None for c in cases].count(True) == 1


def test_the_truth_itself_scores_as_perfectly_synced(eval_world):
    case = make_cases(*eval_world)[0]
    errors = state_errors(case.truth.rendered.frames, case.truth, case.metadata["mouth_poses"])
    # the estimator's own floor: the opening is read closely, width and rounding within about 0.1
    assert errors["sync_correlation"] > 0.8 and errors["opening_error"] < 0.06 and errors["habit_error"] < 0.15
    # the source speaks other words: its mouth does not follow the new speech
    source = state_errors(case.frames, case.truth, case.metadata["mouth_poses"])
    assert source["sync_correlation"] < 0.8 and source["opening_error"] > 2 * errors["opening_error"]


def test_a_clip_with_too_few_readable_frames_has_no_mouth_state_measures(eval_world):
    plain, occluded = make_cases(*eval_world)
    truth = plain.truth
    covered = np.ones(truth.rendered.frames.shape[:3], bool)  # an occluder over every mouth...

    def readable(n):  # ...but the first n frames
        masks = covered.copy()
        masks[:n] = False
        hidden = dataclasses.replace(truth, occluder=occluded.truth.occluder,
                                     rendered=dataclasses.replace(truth.rendered, occluder_masks=masks))
        return state_errors(truth.rendered.frames, hidden, plain.metadata["mouth_poses"])

    few, enough = readable(MIN_VALID_FRAMES - 1), readable(MIN_VALID_FRAMES)
    assert few["valid_frames"] == MIN_VALID_FRAMES - 1 and enough["valid_frames"] == MIN_VALID_FRAMES
    assert all(np.isnan(few[k]) for k in ("sync_correlation", "opening_error", "habit_error"))
    assert all(np.isfinite(enough[k]) for k in ("sync_correlation", "opening_error", "habit_error"))


def test_habit_transfer_truth_uses_the_donors_habit(eval_world):
    a, b = make_cases(*eval_world)
    moved = transfer_truth(a, b)
    assert moved.avatar.habit == b.metadata["avatar"].habit and moved.avatar.seed == a.metadata["avatar"].seed
    assert not np.allclose(moved.states.opening, a.truth.states.opening)


def test_the_habit_blind_truth_speaks_the_same_speech_with_the_mean_habit(eval_world):
    """The habit-blind oracle: the case's avatar and speech with the mean habit, further from the truth's mouth
    states than the truth itself is."""
    case = make_cases(*eval_world)[0]
    blind = habit_blind_truth(case)
    assert blind.avatar.habit == mean_habit() and blind.avatar.seed == case.metadata["avatar"].seed
    assert blind.rendered.frames.shape == case.truth.rendered.frames.shape
    poses = case.metadata["mouth_poses"]
    own = state_errors(case.truth.rendered.frames, case.truth, poses)["habit_error"]
    assert state_errors(blind.rendered.frames, case.truth, poses)["habit_error"] > own + 0.02


def test_the_reference_of_another_habit_is_the_same_clip_with_another_mouth(eval_world):
    """``reference_with_habit``: the frame a dub would pick from the clip rendered with a habit; with the clip's own
    habit it is one of the clip's own frames (a lossless render of it), with the donor's the same face."""
    a, b = make_cases(*eval_world)
    options = DubOptions.from_values(seed=0)
    own = reference_with_habit(a, a.metadata["avatar"].habit, options, FACE_MODEL)
    other = reference_with_habit(a, b.metadata["avatar"].habit, options, FACE_MODEL)
    assert own.shape == other.shape == a.frames.shape[1:] and own.dtype == np.uint8
    # the own-habit render is the clip itself, up to the video codec
    assert min(np.abs(own.astype(int) - f.astype(int)).mean() for f in a.frames) < 3
    assert not np.array_equal(own, other)
    # the same face (at most a neighbouring frame: the strategy reads the mouth), unlike the other clip's avatar
    assert np.abs(own.astype(int) - other).mean() < 0.05 * np.abs(own.astype(int) - b.frames[0]).mean()


def test_a_real_dub_is_measured_and_leaves_every_pixel_outside_the_mask(eval_world):
    cases = make_cases(*eval_world)
    torch.manual_seed(0)
    model = StableDub.from_config(get_preset("tiny")).eval()
    options = DubOptions.from_values(steps=1, seed=0)
    rows = []
    for case in cases:
        metrics, frames = evaluate_clip(case, model, options, FACE_MODEL)
        assert frames.shape == case.frames.shape and frames.dtype == np.uint8
        assert metrics["outside_mask_identical"] is True
        assert 0 < metrics["paste_region_share"] < 0.5
        assert not np.array_equal(frames, case.frames)  # the mouth was repainted
        for key in ("psnr", "ssim", "flicker", "habit_error"):
            assert np.isfinite(metrics[key]), key
        rows.append(metrics)
    assert "occluder_psnr" in rows[1] and "occluder_psnr" not in rows[0]
    mean = mean_metrics(rows)
    assert mean["outside_mask_identical"] is True
    assert mean["psnr"] == pytest.approx((rows[0]["psnr"] + rows[1]["psnr"]) / 2)
    # the same dub without exposure: the occluder is painted over, so its pixels are further from the truth
    metrics, _ = evaluate_clip(cases[1], model, options, FACE_MODEL, exposure=False, check_outside=False)
    assert metrics["occluder_psnr"] < rows[1]["occluder_psnr"]
    assert dataclasses.is_dataclass(options)


def test_the_autoencoder_ceiling_is_the_truth_through_the_vae_inside_the_paste_region(eval_world):
    case = make_cases(*eval_world)[0]
    options = DubOptions.from_values(steps=1, seed=0)
    trained = load_checkpoint(ASSETS / "stabledub_tiny_demo.safetensors", dtype=torch.float32)
    metrics, frames = autoencoder_ceiling(case, trained, options, FACE_MODEL)
    truth = case.truth.rendered.frames
    changed = (frames != truth).any(-1)
    assert changed.any() and changed.mean() < 0.5  # only the mouth region is re-encoded
    torch.manual_seed(0)
    untrained = StableDub.from_config(get_preset("tiny")).eval()
    random_metrics, _ = autoencoder_ceiling(case, untrained, options, FACE_MODEL)
    # a trained autoencoder keeps the mouth: far closer to the truth than an untrained one's output
    assert metrics["psnr"] > random_metrics["psnr"] + 5
    assert np.isfinite(metrics["sync_correlation"]) and metrics["opening_error"] < random_metrics["opening_error"]

"""The audio -> mouth-state function: timing at any fps, habits, real speech."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from conftest import burst
from stabledub_core.errors import EmptyMediaError, InvalidInputError, OptionError
from stabledub_core.synthetic.habit import ARCHETYPES, archetype_habit, mean_habit, sample_habit
from stabledub_core.synthetic.speech_drive import (
    drives,
    frame_times,
    mouth_states,
    speech_features,
    speech_mouth_states,
)

FAST = dataclasses.replace(archetype_habit("neutral"), lag_s=0.0, attack_s=0.01, release_s=0.01, open_bias=0.0)


@pytest.mark.parametrize("fps", [25.0, 30000 / 1001])
def test_opening_follows_a_burst_at_any_fps(fps):
    rate = 16000
    wave = burst(rate)
    states = speech_mouth_states(wave, rate, FAST, fps)
    assert len(states) == math.floor(wave.shape[1] * fps / rate)
    t = frame_times(len(states), fps)
    inside = (t > 1.05) & (t < 1.35)
    outside = (t < 0.95) | (t > 1.5)
    assert states.opening[inside].min() > 0.6
    assert states.opening[outside].max() < 0.05
    first = t[np.argmax(states.opening > 0.3)]
    assert 1.0 - 0.02 <= first <= 1.0 + 1.0 / fps + 0.02  # the first frame at or after the onset opens


def test_states_are_a_function_of_time_not_of_the_frame_rate(speech):
    waveform, rate = speech
    habit = archetype_habit("wide")
    at_25 = speech_mouth_states(waveform, rate, habit, 25)
    at_50 = speech_mouth_states(waveform, rate, habit, 50)
    np.testing.assert_allclose(at_50.as_array()[::2][:len(at_25)], at_25.as_array(), atol=1e-5)


def test_lag_shifts_the_mouth_in_time(speech):
    waveform, rate = speech
    features = speech_features(waveform, rate)
    times = np.arange(0.5, 5.0, 0.04)
    early = dataclasses.replace(FAST, lag_s=-0.08)
    np.testing.assert_allclose(mouth_states(features, early, times).opening,
                               mouth_states(features, FAST, times + 0.08).opening, atol=1e-5)


def test_habits_change_the_mouth_measurably(speech):
    waveform, rate = speech
    states = {name: speech_mouth_states(waveform, rate, archetype_habit(name), 25) for name in ARCHETYPES}
    assert states["wide"].width.mean() > states["pucker"].width.mean() + 0.2
    assert states["pucker"].rounding.mean() > states["wide"].rounding.mean() + 0.15
    assert states["wide"].opening.std() > 1.8 * states["mumbler"].opening.std()
    drawn = [speech_mouth_states(waveform, rate, sample_habit(np.random.default_rng(s), "pucker"), 25)
             for s in range(2)]
    assert not np.array_equal(drawn[0].as_array(), drawn[1].as_array())  # jitter: no two puckerers alike


def test_real_speech_opens_and_closes_the_mouth(speech):
    waveform, rate = speech
    features = speech_features(waveform, rate)
    states = speech_mouth_states(waveform, rate, FAST, 100)
    assert np.percentile(states.opening, 95) > 0.5
    assert np.percentile(states.opening, 5) < 0.1
    n = min(len(states), len(features.voice))
    assert np.corrcoef(states.opening[:n], drives(features)["opening"][:n])[0, 1] > 0.95
    assert np.ptp(states.width) > 0.2 and np.ptp(states.rounding) > 0.2 and np.ptp(states.teeth) > 0.3


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(EmptyMediaError):
        speech_features(np.zeros((1, 0), np.float32), 16000)
    with pytest.raises(InvalidInputError):
        frame_times(10, 0)
    with pytest.raises(OptionError):
        archetype_habit("shouter")
    with pytest.raises(OptionError):
        dataclasses.replace(FAST, attack_s=0.0)


def test_the_mean_habit_is_the_mean_of_the_archetype_centres():
    habit = mean_habit()
    assert habit.archetype == "mean"
    assert habit.open_gain == pytest.approx((0.95 + 1.3 + 0.75 + 0.5) / 4)  # neutral, wide, pucker, mumbler
    assert habit.width_bias == pytest.approx((0.0 + 0.22 - 0.22 - 0.05) / 4)
    assert habit.release_s == pytest.approx((0.09 + 0.07 + 0.12 + 0.16) / 4)

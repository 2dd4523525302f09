from fractions import Fraction

import pytest

from stabledub_core.errors import EmptyMediaError, OptionError
from stabledub_core.media.length_policy import LengthPolicy, audio_frames, plan_length

FPS = Fraction(25)
RATE = 16000


def samples_for(frames: float) -> int:
    return int(round(frames / 25 * RATE))


@pytest.mark.parametrize("policy", list(LengthPolicy))
@pytest.mark.parametrize("audio_frames_", [70, 40, 200])
def test_frame_counts(policy, audio_frames_):
    plan = plan_length(policy, 70, FPS, samples_for(audio_frames_), RATE)
    idx = plan.index_array()
    assert len(idx) == plan.num_frames == len(list(plan.frame_indices()))
    assert idx.min() >= 0 and idx.max() < 70
    expected = {
        LengthPolicy.TRIM: min(70, audio_frames_),
        LengthPolicy.PAD_SILENCE: 70,
    }.get(policy, audio_frames_)
    assert plan.num_frames == expected
    if audio_frames_ == 70:
        assert plan.is_identity and not plan.audio_changed


def test_keep_video_length_policies_give_70_frames():
    for policy in (LengthPolicy.PAD_SILENCE, LengthPolicy.TRIM):
        plan = plan_length(policy, 70, FPS, samples_for(90.3), RATE)
        assert plan.num_frames == 70
        assert plan.audio_changed and plan.audio_samples == samples_for(70)


def test_pad_appends_silence_to_short_audio():
    plan = plan_length("pad", 70, FPS, samples_for(30), RATE)
    assert plan.num_frames == 70 and plan.audio_samples == samples_for(70) and plan.audio_changed


def test_follow_audio_policies_keep_audio_and_round_frames():
    samples = 123457  # 7.716 s -> 192.9 frames at 25 fps
    for policy in (LengthPolicy.LOOP, LengthPolicy.PING_PONG, LengthPolicy.FREEZE):
        plan = plan_length(policy, 70, FPS, samples, RATE)
        assert plan.num_frames == round(samples / RATE * 25) == 193
        assert plan.audio_samples == samples and not plan.audio_changed


def test_sequences():
    loop = plan_length("loop", 4, FPS, samples_for(10), RATE).index_array()
    assert loop.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    pp = plan_length("pingpong", 4, FPS, samples_for(11), RATE).index_array()
    assert pp.tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2]
    fr = plan_length("freeze", 4, FPS, samples_for(7), RATE).index_array()
    assert fr.tolist() == [0, 1, 2, 3, 3, 3, 3]
    cut = plan_length("freeze", 10, FPS, samples_for(3), RATE).index_array()
    assert cut.tolist() == [0, 1, 2]


def test_ntsc_rate_is_exact():
    fps = Fraction(30000, 1001)
    assert audio_frames(48000 * 1001, 48000, fps) == 30000  # 1001 s at 29.97 fps
    plan = plan_length("loop", 70, fps, 44100 * 10, 44100)
    assert plan.num_frames == round(10 * 30000 / 1001)


def test_errors():
    with pytest.raises(OptionError, match="unknown length policy"):
        LengthPolicy.parse("stretch")
    with pytest.raises(EmptyMediaError, match="less than one video frame"):
        plan_length("loop", 70, FPS, 10, RATE)

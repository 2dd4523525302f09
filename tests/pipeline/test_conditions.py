import numpy as np
import pytest
import torch

from stabledub_core.pipeline.conditions import (
    ConditionError,
    HabitFileNotFoundError,
    branch_tokens,
    clip_conditions,
    habit_segment,
    habit_vector,
    load_habit_vector,
    save_habit_vector,
)
from stabledub_core.pipeline.guidance import BRANCH_ORDER, Branch, GuidancePlan


class StubHabit:
    """Habit-module contract: tokens = audio term (unless dropped) + habit term (unless dropped)."""

    def __init__(self):
        self.calls = []

    def encode_habit(self, lip_crops):
        return lip_crops.mean(dim=(1, 3, 4))  # (B, 3)

    def __call__(self, audio, v, drop_audio, drop_habit):
        self.calls.append(audio.shape[0])
        a = audio[..., :3] * (~drop_audio).float().view(-1, 1, 1, 1)
        h = v.view(v.shape[0], 1, 1, -1) * (~drop_habit).float().view(-1, 1, 1, 1)
        return a + h


def test_habit_segment_is_contiguous_shuffled_seeded_and_avoids_the_dubbed_range():
    status = np.zeros(100, dtype=np.uint8)  # TrackStatus.DETECTED
    status[40:45] = 2  # TrackStatus.MISSING
    seg = habit_segment(status, 16, seed=3, avoid=(50, 100))
    assert sorted(seg.tolist()) == list(range(seg.min(), seg.min() + 16))
    assert seg.max() < 50 and (status[seg] != 2).all()
    assert not np.array_equal(seg, np.sort(seg))  # shuffled
    assert np.array_equal(seg, habit_segment(status, 16, seed=3, avoid=(50, 100)))
    assert len({tuple(habit_segment(status, 16, seed=s)) for s in range(5)}) > 1
    with pytest.raises(ValueError, match="shorter segment"):
        habit_segment(np.where(np.arange(40) % 10, 0, 2), 16, 0)


def test_habit_vector_save_load_roundtrip(tmp_path):
    v = torch.randn(64)
    path = tmp_path / "speaker.safetensors"
    save_habit_vector(path, v, {"source": "face_pan.mp4", "frames": "10-26"})
    loaded = load_habit_vector(path, expected_size=64)
    assert torch.equal(loaded.vector, v)
    assert loaded.metadata["source"] == "face_pan.mp4" and loaded.metadata["format"] == "stabledub.habit"
    with pytest.raises(ConditionError, match="another model preset"):
        load_habit_vector(path, expected_size=768)
    with pytest.raises(HabitFileNotFoundError):
        load_habit_vector(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ConditionError, match="not a StableDub habit vector"):
        load_habit_vector(tmp_path / "other.safetensors")
    with pytest.raises(ConditionError, match="1-D"):
        save_habit_vector(path, torch.zeros(2, 2))


def test_habit_vector_from_uint8_crops():
    crops = np.full((4, 8, 8, 3), 255, dtype=np.uint8)
    crops[..., 1] = 0
    torch.testing.assert_close(habit_vector(StubHabit(), crops), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ConditionError, match="uint8"):
        habit_vector(StubHabit(), crops.astype(np.float32))


def test_branch_tokens_use_drop_masks_in_one_forward():
    habit = StubHabit()
    audio = torch.randn(6, 2, 5)
    v = torch.randn(3)
    tokens = branch_tokens(habit, audio, v, BRANCH_ORDER)
    assert habit.calls == [3]
    torch.testing.assert_close(tokens[Branch.UNCOND], torch.zeros(6, 2, 3))
    torch.testing.assert_close(tokens[Branch.AUDIO], audio[..., :3])
    torch.testing.assert_close(tokens[Branch.FULL], audio[..., :3] + v)


def test_clip_conditions():
    latents = torch.randn(6, 4, 2, 2)
    app = latents[2]
    plan = GuidancePlan.from_scales(1.0, 2.0)
    cond = clip_conditions(StubHabit(), torch.randn(6, 2, 5), torch.randn(3), latents, torch.ones(6, 1, 2, 2),
                           app, plan.branches)
    assert set(cond.tokens) == {Branch.AUDIO, Branch.FULL}
    with pytest.raises(ConditionError, match="audio context"):
        clip_conditions(StubHabit(), torch.randn(5, 2, 5), torch.randn(3), latents, torch.ones(6, 1, 2, 2),
                        app, plan.branches)

"""Lip-habit nodes: Habit Encode (lip crops of any clip -> HABIT), Save / Load Habit (safetensors in
models/stabledub_habits), and Sample / Dub consuming a HABIT instead of lip crops (habit transfer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.comfy_stub import micro_config, random_model_node, run_node

CHECKPOINT = "habit.safetensors"
SAMPLING = dict(steps=1, scheduler="ddim", audio_scale=2.0, habit_scale=1.5, seed=0)


@pytest.fixture(scope="module")
def model(comfy):
    return random_model_node(comfy, CHECKPOINT)


def images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((n, size, size, 3), np.float32))


def sample(comfy, model, **condition):
    size, frames = model.crop_size, 4
    audio = {"waveform": torch.from_numpy(np.sin(np.arange(6400) / 9).astype(np.float32))[None, None],
             "sample_rate": 16000}
    (out,) = run_node(comfy, "StableDubSample", model=model, crops=images(frames, size, 1),
                      masks=torch.ones(frames, size, size), appearance=images(frames, size, 2), audio=audio, fps=25.0,
                      **SAMPLING, **condition)
    return out


def test_encode_save_load(comfy, model):
    lips = images(6, model.lip_size, 3)
    (habit,) = run_node(comfy, "StableDubHabitEncode", model=model, lip_crops=lips)
    size = micro_config().habit.hidden_size
    assert habit.shape == (size,) and habit.dtype == torch.float32 and habit.abs().sum() > 0
    (again,) = run_node(comfy, "StableDubHabitEncode", model=model, lip_crops=lips)
    assert torch.equal(habit, again)
    (path,) = run_node(comfy, "StableDubSaveHabit", habit=habit, name="speaker")
    (second,) = run_node(comfy, "StableDubSaveHabit", habit=habit, name="speaker")
    folder = comfy.root / "models" / "stabledub_habits"
    assert [path, second] == [str(folder / "speaker_00001_.safetensors"), str(folder / "speaker_00002_.safetensors")]
    listed = comfy.nodes["StableDubLoadHabit"].INPUT_TYPES()["required"]["habit_name"][0]
    assert listed == ["speaker_00001_.safetensors", "speaker_00002_.safetensors"]
    (loaded,) = run_node(comfy, "StableDubLoadHabit", habit_name="speaker_00001_.safetensors")
    assert torch.equal(loaded, habit)

    from stabledub_core.errors import StableDubError

    with pytest.raises(StableDubError, match="plain file name"):
        run_node(comfy, "StableDubSaveHabit", habit=habit, name="../elsewhere")


def test_sample_takes_a_habit_instead_of_lip_crops(comfy, model):
    # another speaker's lips: clearly other crops (two sets of uniform noise give nearly the same habit vector, too
    # close to change the micro model's 8-bit output)
    lips = images(6, model.lip_size, 3)
    other = torch.zeros_like(lips)
    (habit,) = run_node(comfy, "StableDubHabitEncode", model=model, lip_crops=lips)
    (transferred,) = run_node(comfy, "StableDubHabitEncode", model=model, lip_crops=other)
    from_lips = sample(comfy, model, lip_crops=lips)
    assert torch.equal(sample(comfy, model, habit=habit), from_lips)  # the same condition, encoded once
    assert not torch.equal(sample(comfy, model, habit=transferred), from_lips)  # another speaker's habit counts

    from stabledub_core.errors import StableDubError

    with pytest.raises(StableDubError, match="either lip_crops"):
        sample(comfy, model)
    with pytest.raises(StableDubError, match="either lip_crops"):
        sample(comfy, model, lip_crops=lips, habit=habit)
    with pytest.raises(StableDubError, match="another model preset"):
        sample(comfy, model, habit=torch.zeros(habit.shape[0] + 1))

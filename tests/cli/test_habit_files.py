"""``--save-habit`` keeps the lip-habit vector a dub used; ``--habit`` dubs with a saved one."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
import torch

from helpers.media_factory import tone, write_video, write_wav
from stabledub_core.cli.main import EXIT_USER_ERROR, main
from stabledub_core.models.checkpoint import save_checkpoint
from stabledub_core.models.config import get_preset
from stabledub_core.models.stabledub import StableDub
from stabledub_core.pipeline.conditions import load_habit_vector, save_habit_vector

SIZE, FRAMES = 160, 12


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, media_dir):
    folder = tmp_path_factory.mktemp("habit")
    with av.open(str(media_dir / "face_pan.mp4")) as c:
        frames = [cv2.resize(f.to_ndarray(format="rgb24"), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
                  for _, f in zip(range(FRAMES), c.decode(video=0))]
    torch.manual_seed(0)
    model = StableDub.from_config(get_preset("tiny"))
    with torch.no_grad():  # the zero-initialised output layers made random, so the habit vector shows in the frames
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.05)
    return {"video": write_video(folder / "v.mp4", FRAMES, fps=25, size=(SIZE, SIZE), frames=frames),
            "speech": write_wav(folder / "s.wav", tone(FRAMES / 25, 16000), 16000),
            "checkpoint": save_checkpoint(model, folder / "tiny.safetensors"),
            "habit_size": model.config.habit.hidden_size}


def dub(inputs, face_model_path, out, *extra) -> int:
    return main(["dub", "--video", str(inputs["video"]), "--audio", str(inputs["speech"]), "--checkpoint",
                 str(inputs["checkpoint"]), "--out", str(out), "--face-model", str(face_model_path), "--steps", "1",
                 "--x264-preset", "ultrafast", "--quiet", *map(str, extra)])


def frames_of(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_saved_habit_reproduces_the_dub_and_another_habit_changes_it(inputs, face_model_path, tmp_path):
    habit = tmp_path / "speaker.safetensors"
    assert dub(inputs, face_model_path, tmp_path / "own.mp4", "--save-habit", habit) == 0
    saved = load_habit_vector(habit, expected_size=inputs["habit_size"])
    assert saved.metadata["preset"] == "tiny" and saved.metadata["video"] == str(inputs["video"])
    assert dub(inputs, face_model_path, tmp_path / "saved.mp4", "--habit", habit) == 0
    np.testing.assert_array_equal(frames_of(tmp_path / "saved.mp4"), frames_of(tmp_path / "own.mp4"))
    other = tmp_path / "other.safetensors"
    save_habit_vector(other, -saved.vector)
    assert dub(inputs, face_model_path, tmp_path / "other.mp4", "--habit", other) == 0
    assert not np.array_equal(frames_of(tmp_path / "other.mp4"), frames_of(tmp_path / "own.mp4"))


def test_a_habit_of_the_wrong_size_is_one_clear_error(inputs, face_model_path, tmp_path, capfd):
    wrong = tmp_path / "wrong.safetensors"
    save_habit_vector(wrong, torch.zeros(inputs["habit_size"] + 1))
    out = tmp_path / "o.mp4"
    assert dub(inputs, face_model_path, out, "--habit", wrong) == EXIT_USER_ERROR
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "habit vector of size" in err[0] and not out.exists()

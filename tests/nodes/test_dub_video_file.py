"""StableDub Dub Video File: the streaming dub of a file (bounded memory) as a node: the same frames as the in-memory
Dub node, ComfyUI's file numbering and video UI result, per-step progress, interruption with no file left, and the
video given by the input list, a path or a ComfyUI VIDEO (its file streamed, not decoded)."""

from __future__ import annotations

import io
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from helpers.comfy_stub import random_model_node, run_node
from helpers.media_factory import tone, write_video
from stabledub_core.media.clip import read_clip, write_clip

FRAMES, SIZE, FPS = 12, 192, 25
CHECKPOINT = "file_node.safetensors"
VALUES = dict(length_policy="trim", steps=1, scheduler="ddim", audio_scale=2.0, habit_scale=1.5, seed=3, overlap=4,
              windows_per_chunk=1, reference="closed_lips", habit_frames=6, mask_margin=0.08, occluder_grid=16,
              occluder_fraction=0.2)


@pytest.fixture(scope="module")
def setup(comfy, media_dir):
    with av.open(str(media_dir / "face_pan.mp4")) as c:
        frames = [cv2.resize(f.to_ndarray(format="rgb24"), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
                  for _, f in zip(range(FRAMES), c.decode(video=0))]
    write_video(comfy.root / "input" / "clip.mp4", FRAMES, fps=FPS, size=(SIZE, SIZE), frames=frames)
    handle = random_model_node(comfy, CHECKPOINT)
    speech = tone(0.8, 16000, freq=180.0)  # longer than the clip: trimmed to its 12 frames
    audio = {"waveform": torch.from_numpy(np.asarray(speech, np.float32).reshape(1, -1))[None], "sample_rate": 16000}
    return {"model": handle, "audio": audio}


LOSSLESS = 0  # x264's lossless mode: files of the same frames decode the same, whatever the encoder's timing


def dub(comfy, setup, **inputs):
    values = {"model": setup["model"], "face_model": "face_landmarker.task", "filename_prefix": "files/dub",
              "format": "mp4", "crf": LOSSLESS, "invert": False, "video": "clip.mp4", "audio": setup["audio"],
              **VALUES, **inputs}
    (path,) = run_node(comfy, "StableDubDubVideoFile", **values)
    return Path(path)


def decoded(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_same_frames_as_the_dub_node_numbered_and_shown(comfy, setup, tmp_path):
    comfy.progress.clear()
    path = dub(comfy, setup)
    assert path.name == "dub_00001_.mp4" and path.parent == comfy.root / "output" / "files"
    assert comfy.ui == {"images": [{"filename": "dub_00001_.mp4", "subfolder": "files", "type": "output"}],
                        "animated": (True,)}
    sample = [p for p in comfy.progress if p[1] == comfy.progress[-1][1]]
    assert len(comfy.progress) >= FRAMES + 1 and sample[-1][0] == sample[-1][1]  # tracking, then every step
    with av.open(str(path)) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
    clip = read_clip(comfy.root / "input" / "clip.mp4")
    images, _, _ = run_node(comfy, "StableDubDub", model=setup["model"], face_model="face_landmarker.task",
                            images=torch.from_numpy(clip.frames).float() / 255, audio=setup["audio"],
                            fps=float(clip.fps), **VALUES)
    node = (images.numpy() * 255).round().astype(np.uint8)
    write_clip(tmp_path / "node.mp4", node, FPS, crf=LOSSLESS)
    np.testing.assert_array_equal(decoded(path), decoded(tmp_path / "node.mp4"))  # streaming == in memory
    assert not np.array_equal(node, clip.frames)  # the frames were dubbed
    assert dub(comfy, setup).name == "dub_00002_.mp4"  # a second run keeps the first file


def test_video_from_a_path_or_a_comfyui_video(comfy, setup):
    class VideoFromFile:  # core Load Video's VIDEO: the front end never decoded it
        def __init__(self, source):
            self.source = source

        def get_stream_source(self):
            return self.source

    clip = comfy.root / "input" / "clip.mp4"
    reference = decoded(dub(comfy, setup, filename_prefix="files/list"))
    for inputs in ({"video_path": str(clip)}, {"video_path": "clip.mp4"}, {"video_in": VideoFromFile(str(clip))},
                   {"video_in": VideoFromFile(io.BytesIO(clip.read_bytes()))}):
        out = dub(comfy, setup, video="(the video input or video_path)", filename_prefix="files/other", **inputs)
        np.testing.assert_array_equal(decoded(out), reference)

    from stabledub_core.errors import StableDubError

    with pytest.raises(StableDubError, match="no such file"):
        dub(comfy, setup, video_path="missing.mp4")
    with pytest.raises(StableDubError, match="no video"):
        dub(comfy, setup, video="(the video input or video_path)")
    with pytest.raises(StableDubError, match="holds frames"):
        dub(comfy, setup, video_in=object())  # a VIDEO made of frames (Create Video): no file to stream


def test_interrupt_leaves_no_file(comfy, setup):
    import comfy.model_management as mm

    folder = comfy.root / "output" / "stopped"
    comfy.polls, comfy.interrupt_after = 0, 3
    try:
        with pytest.raises(mm.InterruptProcessingException):
            dub(comfy, setup, filename_prefix="stopped/dub")
    finally:
        comfy.interrupt_after = None
    assert not folder.exists() or not any(folder.iterdir())  # no partial video, no temporary speech or mask


def test_habit_from_elsewhere(comfy, setup):
    model = setup["model"]
    lips = torch.from_numpy(np.random.default_rng(5).random((6, model.lip_size, model.lip_size, 3), np.float32))
    (habit,) = run_node(comfy, "StableDubHabitEncode", model=model, lip_crops=lips)
    own = decoded(dub(comfy, setup, filename_prefix="habit/own"))
    transferred = decoded(dub(comfy, setup, filename_prefix="habit/transferred", habit=habit))
    assert own.shape == transferred.shape and not np.array_equal(own, transferred)

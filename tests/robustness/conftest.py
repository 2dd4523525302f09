"""Inputs of the robustness matrix, made once per session from files in the repository.

Everything is small so that a whole dub (MediaPipe tracking, the tiny preset, one sampler step) takes a few seconds:
4 frames of the astronaut photo under the head motion of ``assets/face_occluded.mp4`` at 160x160, a 0.16 s tone as
speech (the model's cost grows with the frames; a dub of 12 frames for the signal tests, which must last), the face
moving 34 px a frame, and checkpoints of the tiny preset (one healthy, one with a NaN weight, one all-inf VAE tensor, one whose
weights overflow when the model runs).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from helpers.media_factory import tone, write_video, write_wav
from helpers.repo_media import astronaut, pan_frames
from stabledub_core.models.checkpoint import save_checkpoint
from stabledub_core.models.config import get_preset
from stabledub_core.models.stabledub import StableDub

SIZE, FRAMES, FPS = 160, 4, 25
LONG = 12  # frames of the clip the signal tests interrupt


def _frames(size: int = SIZE, count: int = FRAMES) -> list[np.ndarray]:
    return [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in pan_frames(astronaut())[:count]]


def _two_faces(frames: list[np.ndarray]) -> list[np.ndarray]:
    """(160, 320, 3): the face at full size on the left, at 3/4 size on the right (so 'largest' is the left one)."""
    out = []
    for f in frames:
        small = cv2.resize(f, (120, 120), interpolation=cv2.INTER_AREA)
        right = np.full_like(f, 40)
        right[20:140, 20:140] = small
        out.append(np.concatenate([f, right], axis=1))
    return out


STEP = 34  # px a frame of the fast-moving face


FAST_FACE, FAST_SIZE = 192, (288, 294)  # the fast clip: face frames of 192 px in 294x288 frames (a smaller face is lost)


def _fast(frames: list[np.ndarray]) -> list[np.ndarray]:
    """The face frames moving STEP px a frame to the right over a grey background, in frames tall enough for a crop
    box holding their travel."""
    out = []
    for k, f in enumerate(frames):
        canvas = np.full((*FAST_SIZE, 3), 90, np.uint8)
        canvas[48:48 + FAST_FACE, STEP * k:STEP * k + FAST_FACE] = f
        out.append(canvas)
    return out


def _faststart(path: Path, frames: list[np.ndarray]) -> Path:
    """An MP4 whose header (moov) comes first, so a truncated copy still announces every frame."""
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _odd_video(path: Path, frames: list[np.ndarray], size: tuple[int, int]) -> Path:
    """An odd-sized video (4:4:4, as 4:2:0 needs even sizes), written with raw PyAV."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuv444p"
        stream.options = {"preset": "ultrafast"}
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(cv2.resize(image, (size[1], size[0]))),
                                               format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("robustness")
    frames = _frames()
    speech = tone(FRAMES / FPS, 16000)
    files = {
        "video": write_video(folder / "face.mp4", FRAMES, fps=FPS, size=(SIZE, SIZE), frames=frames,
                             audio=speech, audio_rate=16000),
        "speech": write_wav(folder / "speech.wav", speech, 16000),
        "two_faces": write_video(folder / "two.mp4", FRAMES, fps=FPS, size=(SIZE, 2 * SIZE),
                                 frames=_two_faces(frames)),
        "odd": _odd_video(folder / "odd.mp4", frames, (159, 161)),
        "fast": write_video(folder / "fast.mp4", FRAMES, fps=FPS, size=FAST_SIZE, frames=_fast(_frames(FAST_FACE))),
        "long_video": write_video(folder / "long.mp4", LONG, fps=FPS, size=(SIZE, SIZE), frames=_frames(count=LONG),
                                  audio=tone(LONG / FPS, 16000), audio_rate=16000),
    }
    full = _faststart(folder / "full.mp4", _frames(count=30))
    data = full.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[:len(data) // 2])
    files["truncated"] = folder / "truncated.mp4"
    nan_speech = speech.copy()
    nan_speech[0, len(speech[0]) // 2] = np.nan
    files["nan_speech"] = write_wav(folder / "nan.wav", nan_speech, 16000, codec="pcm_f32le")

    torch.manual_seed(0)
    model = StableDub.from_config(get_preset("tiny"))
    files["checkpoint"] = save_checkpoint(model, folder / "tiny.safetensors")
    with torch.no_grad():
        weight = model.unet.conv_in.weight
        kept = weight.view(-1)[7].item()
        weight.view(-1)[7] = float("nan")
        files["nan_checkpoint"] = save_checkpoint(model, folder / "nan.safetensors")
        weight.view(-1)[7] = kept
        vae_name, vae_tensor = next((n, p) for n, p in model.vae.named_parameters() if p.dim() > 1)
        kept_vae = vae_tensor.clone()
        vae_tensor.fill_(float("inf"))
        files["inf_checkpoint"] = save_checkpoint(model, folder / "inf.safetensors")
        files["inf_tensor"] = f"vae.{vae_name}"
        vae_tensor.copy_(kept_vae)
        model.unet.conv_out.weight.fill_(3e38)  # finite, but the first convolution overflows to inf
        files["overflow_checkpoint"] = save_checkpoint(model, folder / "overflow.safetensors")
    return files

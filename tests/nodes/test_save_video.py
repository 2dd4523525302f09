"""StableDub Save Video: ComfyUI's numbering (never over an earlier file), the UI result of core SaveVideo, AAC by
default with a lossless option, and as many frames in the file as given, under every length policy."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from helpers.comfy_stub import run_node

FPS, FRAMES, RATE = 25.0, 8, 44100


def frames(n: int = FRAMES) -> torch.Tensor:
    rng = np.random.default_rng(n)
    return torch.from_numpy(rng.random((n, 48, 64, 3), np.float32))


def speech(seconds: float, channels: int = 2) -> dict:
    t = np.arange(int(round(seconds * RATE))) / RATE
    wave = 0.3 * np.sin(2 * np.pi * 220 * t)[None].repeat(channels, 0).astype(np.float32)
    return {"waveform": torch.from_numpy(wave)[None], "sample_rate": RATE}


def save(comfy, images, audio=None, prefix="save/clip", fmt="mp4", codec=None):
    extra = {} if codec is None else {"audio_codec": codec}
    (path,) = run_node(comfy, "StableDubSaveVideo", images=images, fps=FPS, filename_prefix=prefix, format=fmt,
                       crf=18, audio=audio, **extra)
    return Path(path)


def probe(path: Path) -> tuple[int, str | None, int]:
    """Video frames, audio codec and decoded audio samples of a file."""
    with av.open(str(path)) as c:
        video = sum(1 for _ in c.decode(video=0))
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return video, None, 0
        codec = c.streams.audio[0].codec_context.name
        samples = sum(f.samples for f in c.decode(audio=0))
    return video, codec, samples


def test_numbering_as_comfyui_never_overwrites(comfy):
    first = save(comfy, frames(), speech(0.32))
    assert comfy.ui == {"images": [{"filename": "clip_00001_.mp4", "subfolder": "save", "type": "output"}],
                        "animated": (True,)}  # what core SaveVideo returns: the front end shows the video
    second = save(comfy, frames(), speech(0.32))
    assert (first.name, second.name) == ("clip_00001_.mp4", "clip_00002_.mp4")
    assert first.stat().st_size > 0 and first.read_bytes() != b""
    third = save(comfy, frames(), fmt="mkv")
    assert third.name == "clip_00003_.mkv"
    folder = comfy.root / "output" / "save"
    assert sorted(p.name for p in folder.iterdir()) == ["clip_00001_.mp4", "clip_00002_.mp4", "clip_00003_.mkv"]


@pytest.mark.parametrize("fmt", ["mp4", "mov", "mkv"])
def test_aac_by_default_lossless_on_request(comfy, fmt):
    audio = speech(FRAMES / FPS)
    video, codec, _ = probe(save(comfy, frames(), audio, prefix=f"codec/{fmt}", fmt=fmt))
    assert (video, codec) == (FRAMES, "aac")  # plays in browsers and players
    path = save(comfy, frames(), audio, prefix=f"codec/{fmt}", fmt=fmt, codec="lossless")
    video, codec, samples = probe(path)
    assert codec == ("alac" if fmt == "mp4" else "pcm_s16le") and samples == round(FRAMES / FPS * RATE)
    with av.open(str(path)) as c:
        decoded = np.concatenate([f.to_ndarray().reshape(2, -1) if f.format.is_planar else
                                  f.to_ndarray().reshape(-1, 2).T for f in c.decode(audio=0)], axis=1)
    expected = np.round(np.clip(audio["waveform"][0].numpy(), -1, 1) * 32767)
    np.testing.assert_array_equal(decoded.astype(np.int64), expected.astype(np.int64))  # 16 bits, bit for bit


def test_every_frame_under_every_length_policy(comfy):
    policies = comfy.nodes["StableDubFitLength"].INPUT_TYPES()["required"]["length_policy"][0]
    assert len(policies) >= 4
    for seconds in (0.2, 0.6):  # speech shorter and longer than the 8 frames (0.32 s)
        for policy in policies:
            images, audio = run_node(comfy, "StableDubFitLength", images=frames(), audio=speech(seconds), fps=FPS,
                                     length_policy=policy)
            path = save(comfy, images, audio, prefix=f"policy/{policy}", codec="lossless")
            video, _, samples = probe(path)
            assert video == len(images), (policy, seconds)
            assert samples == round(len(images) / FPS * RATE), (policy, seconds)


def test_audio_fitted_to_the_frames(comfy):
    for seconds in (0.1, 1.0):  # padded with silence, cut
        video, _, samples = probe(save(comfy, frames(), speech(seconds), prefix="fit/clip", codec="lossless"))
        assert (video, samples) == (FRAMES, round(FRAMES / FPS * RATE))


def test_bad_input_is_a_clear_error(comfy):
    from stabledub_core.errors import StableDubError

    with pytest.raises(StableDubError, match="IMAGE batch"):
        save(comfy, torch.zeros(4, 8, 8, 4))
    with pytest.raises(StableDubError, match="audio codec"):
        save(comfy, frames(), speech(0.3), codec="opus")

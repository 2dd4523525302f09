"""The real (tiny, random-weights) StableDub model through the streaming pipeline: one short end-to-end run."""

import av
import cv2
import numpy as np
import pytest
import torch

from helpers.media_factory import count_frames, decode_native, tone, write_video, write_wav
from helpers.sampler_stubs import LinearDenoiser
from stabledub_core.models.config import get_preset
from stabledub_core.models.stabledub import StableDub
from stabledub_core.errors import OptionError
from stabledub_core.models.vae import decode_latents, encode_frames
from stabledub_core.pipeline.chunk_model import SourceSpeech, StableDubChunkModel
from stabledub_core.pipeline.dub import dub_video
from stabledub_core.pipeline.options import DubOptions, RuntimeOptions, SamplingOptions
from stabledub_core.runtime import StageTimer

SIZE = 160


def test_tiny_model_end_to_end(tmp_path, media_dir, face_model_path):
    with av.open(str(media_dir / "face_pan.mp4")) as c:
        frames = [cv2.resize(f.to_ndarray(format="rgb24"), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
                  for _, f in zip(range(20), c.decode(video=0))]
    video = write_video(tmp_path / "v.mp4", 20, fps=25, size=(SIZE, SIZE), frames=frames)
    speech_path = write_wav(tmp_path / "s.wav", tone(20 / 25, 16000), 16000)
    torch.manual_seed(0)
    model = StableDub.from_config(get_preset("tiny"))
    out = tmp_path / "o.mp4"
    result = dub_video(video, speech_path, model, out,
                       DubOptions.from_values(face_model=face_model_path, steps=1, x264_preset="ultrafast"))
    n, _, seconds = count_frames(out)
    assert n == result.num_frames == 20
    np.testing.assert_array_equal(decode_native(out), decode_native(speech_path))
    assert {"sample", "vae_encode", "vae_decode", "track"} <= set(result.seconds)
    with av.open(str(out)) as c:
        dubbed = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(video)) as c:
        source = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    diff = np.abs(dubbed[10].astype(int) - source[10]).sum(axis=2)  # (H, W)
    assert diff[:15, :15].mean() < 12  # outside the mouth: unchanged up to re-encoding (sum of 3 channels)
    assert diff.max() > 60  # inside: generated (random weights)


def test_inversion_starts_from_the_source_crops(media_dir):
    # With a denoiser that DDIM inverts well (linear in its input), the inverted start denoises back to the source
    # crops' latents: the output is the VAE round trip of the source; from fresh noise it is not.
    torch.manual_seed(0)
    model = StableDub.from_config(get_preset("tiny"))
    del model.unet
    model.unet = LinearDenoiser()
    size = int(model.config.resolution)
    with av.open(str(media_dir / "face_pan.mp4")) as c:
        crops = np.stack([cv2.resize(f.to_ndarray(format="rgb24")[120:400, 110:390], (size, size))
                          for _, f in zip(range(8), c.decode(video=0))])  # (8, S, S, 3) around the face
    masks = np.zeros((8, size, size), np.float32)
    masks[:, size // 2:, size // 4:-size // 4] = 1
    wave = tone(1.0, 16000).reshape(-1).astype(np.float32)
    times = np.arange(8) / 25.0
    lips = np.zeros((4, model.config.habit.lip_size, model.config.habit.lip_size, 3), np.uint8)
    with torch.no_grad():
        roundtrip = decode_latents(model.vae, encode_frames(model.vae, torch.from_numpy(crops).permute(0, 3, 1, 2)
                                                            .float().div(255)))
    roundtrip = roundtrip.permute(0, 2, 3, 1).numpy() * 255
    error = {}
    for steps, invert in ((100, False), (20, True), (100, True)):
        chunk = StableDubChunkModel(model, SamplingOptions(steps=steps, audio_scale=1.0, habit_scale=1.0),
                                    RuntimeOptions())
        chunk.begin(wave, times, chunk.encode_habit(lips), source=SourceSpeech(wave, times) if invert else None)
        clock = StageTimer()
        out = chunk.generate(0, crops, masks, crops, clock, None)
        assert ("invert" in clock.seconds) == invert
        error[steps, invert] = np.abs(out.astype(np.float32) - roundtrip).mean()
    # The DDIM inversion error shrinks with the step size; far below fresh noise's distance from the source.
    assert error[100, True] < error[20, True] / 2 and error[100, True] < 0.15 * error[100, False]


def test_inversion_through_the_pipeline_needs_the_videos_speech(tmp_path, media_dir, face_model_path):
    with av.open(str(media_dir / "face_pan.mp4")) as c:
        frames = [cv2.resize(f.to_ndarray(format="rgb24"), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
                  for _, f in zip(range(12), c.decode(video=0))]
    video = write_video(tmp_path / "v.mp4", 12, fps=25, size=(SIZE, SIZE), frames=frames,
                        audio=tone(12 / 25, 16000).reshape(1, -1))
    silent = write_video(tmp_path / "silent.mp4", 12, fps=25, size=(SIZE, SIZE), frames=frames)
    torch.manual_seed(0)
    model = StableDub.from_config(get_preset("tiny"))
    options = DubOptions.from_values(face_model=face_model_path, steps=1, x264_preset="ultrafast", invert=True)
    speech = write_wav(tmp_path / "s.wav", tone(12 / 25, 16000, freq=220.0), 16000)
    result = dub_video(video, speech, model, tmp_path / "o.mp4", options)
    assert "invert" in result.seconds and count_frames(tmp_path / "o.mp4")[0] == result.num_frames
    with pytest.raises(OptionError, match="no audio track"):
        dub_video(silent, speech, model, tmp_path / "x.mp4", options)
    assert not (tmp_path / "x.mp4").exists()

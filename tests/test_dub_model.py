"""The real (tiny, random-weights) StableDub model through the streaming pipeline: one short end-to-end run."""

import av
import cv2
import numpy as np
import torch

from media_factory import count_frames, decode_native, tone, write_video, write_wav
from stabledub_core.models.config import get_preset
from stabledub_core.models.stabledub import StableDub
from stabledub_core.pipeline.dub import DubOptions, dub_video

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
                       DubOptions(face_model=face_model_path, steps=1, x264_preset="ultrafast"))
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

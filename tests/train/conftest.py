"""The preprocessed folder the training tests share: one 48-frame clip (a 192x192 cut of ``face_pan.mp4``, the real
face photo under head motion, with the bundled Spanish speech), preprocessed for the tiny preset (128-pixel crops,
16-frame spans): 48 stage-1 samples, 3 stage-2 clips."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from helpers.media_factory import write_video
from stabledub_core.media.audio import load_audio
from stabledub_core.train import preprocess as pre

FRAMES = 48  # 1.92 s at 25 fps: three 16-frame spans


@pytest.fixture(scope="session")
def prepared(media_dir, face_model_path, tmp_path_factory) -> tuple[Path, Path]:
    """(the videos folder, the preprocessed OUT_DIR) of one kept clip."""
    root = tmp_path_factory.mktemp("videos")
    with av.open(str(media_dir / "face_pan.mp4")) as container:
        images = [frame.to_ndarray(format="rgb24") for _, frame in zip(range(FRAMES), container.decode(video=0))]
    faces = np.stack([cv2.resize(image[0:256, 96:352], (192, 192), interpolation=cv2.INTER_AREA) for image in images])
    wave, rate = load_audio(media_dir / "speech_es.wav")
    write_video(root / "one.mp4", FRAMES, size=(192, 192), frames=faces, audio=wave[:, :int(FRAMES / 25 * rate)],
                audio_rate=rate)
    out = tmp_path_factory.mktemp("out")
    result = pre.preprocess(root, out, face_model_path, preset="tiny", options=pre.FilterOptions(min_seconds=1.0))
    assert [c["path"] for c in result.manifest["clips"]] == ["one.mp4"]
    return root, out

"""The AV-sync scorer: trained by ``train sync`` on clips whose mouth opens with their speech, it finds the shift
between lips and audio (0 aligned, +8 with the speech delayed by 8 frames); the preprocessing sync filter keeps a
clip whose lips follow its speech and drops one whose lips do not, saying why.

The clips are made here: the repository's astronaut photo (192 x 192 face crop) with a dark mouth opening whose
height follows the RMS energy of each 40 ms of the Spanish speech, two halves of it as two clips.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers.media_factory import write_video
from helpers.repo_media import astronaut
from stabledub_core.cli.main import main
from stabledub_core.errors import CheckpointError, InvalidInputError
from stabledub_core.masks.lips import lip_crops
from stabledub_core.media.audio import load_audio, to_encoder_input
from stabledub_core.models.sync_scorer import (
    SyncScorer,
    SyncScorerConfig,
    audio_windows,
    load_scorer,
    save_scorer,
    sync_offsets,
)
from stabledub_core.train import preprocess as pre
from stabledub_core.train.datasets import PreprocessedData, SampleKey, SyncDataset

MOUTH = (95, 111)  # the lips' centre in the 192-pixel face crop


def speaking_clip(path: Path, wave16: np.ndarray, still: bool = False) -> Path:
    face = cv2.resize(astronaut()[0:256, 96:352], (192, 192), interpolation=cv2.INTER_AREA)
    frames = len(wave16) // 640
    rms = np.sqrt(np.mean(wave16[:frames * 640].reshape(frames, 640) ** 2, axis=1))
    opening = np.zeros(frames) if still else np.clip(rms / (np.percentile(rms, 95) + 1e-9), 0, 1)
    images = []
    for k in range(frames):
        image = face.copy()
        cv2.ellipse(image, MOUTH, (13, int(1 + 9 * opening[k])), 0, 0, 360, (60, 10, 20), -1)
        images.append(image)
    return write_video(path, frames, size=(192, 192), frames=np.stack(images), audio=wave16[None, :frames * 640],
                       audio_rate=16000)


@pytest.fixture(scope="module")
def speaking(media_dir, face_model_path, tmp_path_factory):
    """(the preprocessed folder, the exported scorer, the 16 kHz speech)."""
    wave, rate = load_audio(media_dir / "speech_es.wav")
    wave16 = to_encoder_input(wave, rate)
    videos = tmp_path_factory.mktemp("speaking")
    half = len(wave16) // 2
    speaking_clip(videos / "a.mp4", wave16[:half])
    speaking_clip(videos / "b.mp4", wave16[half:])
    data = tmp_path_factory.mktemp("data")
    pre.preprocess(videos, data, face_model_path, preset="tiny", options=pre.FilterOptions(min_seconds=1.0))
    run = tmp_path_factory.mktemp("run") / "sync"
    assert main(["train", "sync", str(data), "--output", str(run), "--max-steps", "40", "--batch-size", "16",
                 "--learning-rate", "1e-3", "--checkpoint-every", "40"]) == 0
    scorer = run.parent / "scorer.safetensors"
    assert main(["train", "export", str(run), "--out", str(scorer)]) == 0
    return data, scorer, wave16


def test_the_trained_scorer_finds_the_shift_between_lips_and_speech(speaking):
    data, path, _ = speaking
    scorer = load_scorer(path)
    clips = PreprocessedData(data)
    frames = clips.clips[0].frames
    lips = lip_crops(np.asarray(clips.frames(0, "crops", 0, frames)), np.asarray(clips.frames(0, "landmarks", 0,
                                                                                             frames)), 48)
    wave = np.asarray(clips.audio(0))
    aligned = sync_offsets(scorer, lips, wave)
    delayed = sync_offsets(scorer, lips, np.concatenate([np.zeros(8 * 640, np.float32), wave])[:len(wave)])
    assert aligned.offset == 0 and delayed.offset == 8
    assert aligned.lse_c > 0.2 and aligned.distances.shape == (31,)
    assert aligned.lse_d == pytest.approx(aligned.distances.min())


def test_the_sync_filter_keeps_a_speaking_clip_and_drops_a_still_mouth(speaking, face_model_path, tmp_path):
    _, scorer, wave16 = speaking
    videos = tmp_path / "videos"
    videos.mkdir()
    speaking_clip(videos / "talks.mp4", wave16[:len(wave16) // 2])
    speaking_clip(videos / "still.mp4", wave16[:len(wave16) // 2], still=True)
    options = pre.FilterOptions(min_seconds=1.0, sync_scorer=str(scorer), min_sync_confidence=0.2)
    result = pre.preprocess(videos, tmp_path / "out", face_model_path, preset="tiny", options=options)
    assert [c["path"] for c in result.manifest["clips"]] == ["talks.mp4"]
    kept = result.manifest["clips"][0]["measured"]
    assert kept["sync_offset"] == 0 and kept["sync_confidence"] >= 0.2
    (dropped,) = result.manifest["dropped"]
    assert dropped["path"] == "still.mp4" and dropped["filter"] == "sync"
    assert "the lips follow the speech with confidence" in dropped["reason"]
    row = {f["filter"]: f for f in result.report["filters"]}["sync"]
    assert row["dropped_clips"] == 1 and row["kept_clips"] == 1


def test_stacks_audio_windows_and_checkpoints(speaking, tmp_path):
    data, _, _ = speaking
    config = SyncScorerConfig()
    sample = SyncDataset(data, config)[SampleKey(3, 0, 0.0)]
    assert sample["lips"].shape == (5, 3, 48, 48) and sample["audio"].shape == (config.audio_samples,)
    windows = audio_windows(np.arange(16000, dtype=np.float32), np.array([0.0, 0.5]), 3200)
    assert windows[0, :1600].sum() == 0 and windows[0, 1600] == 0 and windows[1, 0] == 8000 - 1600
    scorer = SyncScorer(config)
    path = save_scorer(scorer, tmp_path / "s.safetensors")
    again = load_scorer(path)
    assert all((a == b).all() for a, b in zip(scorer.state_dict().values(), again.state_dict().values()))
    with pytest.raises(InvalidInputError, match="fewer than one 5-frame stack"):
        sync_offsets(again, np.zeros((3, 48, 48, 3), np.uint8), np.zeros(3200, np.float32))
    from safetensors.torch import save_file
    import torch

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a sync scorer checkpoint"):
        load_scorer(tmp_path / "other.safetensors")

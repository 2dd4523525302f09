"""Training datasets over a preprocessed folder: shapes, equality with the shards and the pipeline, exposure schedule,
audio windows as inference cuts them, the habit segment and the appearance frame.

The preprocessed folder is the ``prepared`` fixture of conftest.py: one 48-frame clip (a cut of ``face_pan.mp4`` with
the bundled speech), preprocessed for the tiny preset (128-pixel crops, 16-frame spans).
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from stabledub_core.errors import DatasetNotFoundError
from stabledub_core.masks.crop_spans import CropPlan
from stabledub_core.masks.exposure import ExposureSchedule, apply, from_schedule, union_cells
from stabledub_core.masks.lips import lip_crops
from stabledub_core.media.video import Run, VideoReader
from stabledub_core.models.audio_context import audio_segment, frame_audio_context
from stabledub_core.models.config import get_preset
from stabledub_core.pipeline import stages
from stabledub_core.pipeline.chunk_model import StableDubChunkModel
from stabledub_core.pipeline.options import MaskOptions
from stabledub_core.train import preprocess as pre
from stabledub_core.train.datasets import SampleKey, Stage1Dataset, Stage2Dataset

FRAMES = 48  # 1.92 s at 25 fps: three 16-frame spans
S = 128  # the tiny preset's resolution


def shard_arrays(out: Path) -> dict[str, np.ndarray]:
    return {name: np.load(out / "shards" / "shard-00000" / f"{name}.npy") for name in pre.ARRAYS}


def test_stage1_sample_shapes_dtypes_and_ranges(prepared):
    _, out = prepared
    data = Stage1Dataset(out)
    assert len(data) == FRAMES
    sample = data[5]
    for name in ("crop", "masked", "appearance"):
        assert sample[name].shape == (3, S, S) and sample[name].dtype == torch.float32
        assert 0 <= sample[name].min() and sample[name].max() <= 1
    for name in ("mc", "mu", "mask"):
        assert sample[name].shape == (1, S, S) and sample[name].dtype == torch.float32
        assert 0 <= sample[name].min() and sample[name].max() <= 1
    assert set(sample["mc"].unique().tolist()) <= {0.0, 1.0}
    assert sample["exposed"].shape == (16, 16) and sample["exposed"].dtype == torch.bool
    assert (int(sample["clip"]), int(sample["frame"])) == (0, 5)
    batch = next(iter(DataLoader(data, batch_size=4)))
    assert batch["crop"].shape == (4, 3, S, S) and batch["exposure_rate"].shape == (4,)


def test_stage1_sample_equals_the_shards_and_the_pipeline(prepared, face_model_path):
    root, out = prepared
    arrays = shard_arrays(out)
    data = Stage1Dataset(out, exposure=None)  # no exposure: the mask is Mu itself
    config = get_preset("tiny")
    with VideoReader(root / "one.mp4") as reader:
        track = stages.track_faces(reader, face_model_path)
        plan = CropPlan(track, crop_size=config.resolution, span_length=config.num_frames,
                        config=MaskOptions().mask_config(config.crop_box_scale))
        images = list(reader.frames_at([Run(0, reader.num_frames, 1)]))
    for k in (0, 21, 47):
        sample = data[k]
        crop = (sample["crop"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert np.array_equal(crop, arrays["crops"][k])
        assert np.array_equal(sample["mc"][0].numpy(), arrays["mc"][k].astype(np.float32))
        assert np.array_equal(sample["mu"][0].numpy(), arrays["mu"][k // 16].astype(np.float32) / 255)
        # the pipeline's own computation for the same frame
        span, offset = plan.span_at(k)
        assert np.array_equal(crop, stages.crop_frame(images[k], span, config.resolution))
        assert np.array_equal(sample["mc"][0].numpy(), span.coarse_masks[offset].astype(np.float32))
        assert np.abs(sample["mu"][0].numpy() - span.union_mask).max() <= 0.5 / 255 + 1e-6
        # the masked input is what StableDubChunkModel.generate encodes: np.where(masks > 0, 0, crops)
        expected = np.where((sample["mask"][0].numpy() > 0)[..., None], 0, crop)
        assert np.array_equal((sample["masked"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), expected)
        assert torch.equal(sample["mask"], sample["mu"])


def test_exposure_follows_the_schedule_and_is_reproducible(prepared):
    _, out = prepared
    data = Stage1Dataset(out, seed=3)
    mu = data[10]["mu"][0].numpy()
    total = int(union_cells(mu, 16).sum())
    assert total > 10
    start = data[SampleKey(10, 0, 0.0)]
    assert float(start["exposure_rate"]) == pytest.approx(0.7)
    assert int(start["exposed"].sum()) == round(0.7 * total)
    assert int(data[SampleKey(10, 0, 0.5)]["exposed"].sum()) == round(0.35 * total)
    end = data[SampleKey(10, 0, 1.0)]
    assert int(end["exposed"].sum()) == 0 and torch.equal(end["mask"], end["mu"])
    # the exposed patches are Mu's cells and zero the mask there, as masks.exposure.apply does
    exposed = start["exposed"].numpy()
    assert not (exposed & ~union_cells(mu, 16)).any()
    cells = from_schedule(mu, 16, 0.7, np.random.default_rng([3, 0, 10, 0]))
    assert np.array_equal(cells.to_array(), exposed)
    assert np.array_equal(start["mask"][0].numpy(), apply(mu, cells))
    # reproducible for (seed, epoch, index); set_progress / set_epoch equal a SampleKey
    data.set_progress(0.0)
    assert torch.equal(data[10]["exposed"], start["exposed"])
    assert torch.equal(Stage1Dataset(out, seed=3)[SampleKey(10, 0, 0.0)]["mask"], start["mask"])
    assert not torch.equal(data[SampleKey(10, 1, 0.0)]["exposed"], start["exposed"])
    assert not torch.equal(Stage1Dataset(out, seed=4)[SampleKey(10, 0, 0.0)]["exposed"], start["exposed"])
    custom = Stage1Dataset(out, exposure=ExposureSchedule(start=0.5, end=0.1))
    assert float(custom[SampleKey(10, 0, 0.0)]["exposure_rate"]) == pytest.approx(0.5)
    assert float(custom[SampleKey(10, 0, 1.0)]["exposure_rate"]) == pytest.approx(0.1)


def test_the_appearance_frame_is_not_the_target_frame(prepared):
    _, out = prepared
    arrays = shard_arrays(out)
    data = Stage1Dataset(out, exclude_radius=8)
    for k in range(0, FRAMES, 3):
        sample = data[k]
        reference = int(sample["appearance_frame"])
        assert abs(reference - k) > 8
        assert np.array_equal((sample["appearance"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
                              arrays["crops"][reference])
    clips = Stage2Dataset(out)
    for i in range(len(clips)):
        sample = clips[i]
        start = int(sample["start"])
        assert not start <= int(sample["appearance_frame"]) < start + 16


def test_stage2_clip_shapes_and_equality_with_the_shards(prepared):
    _, out = prepared
    arrays = shard_arrays(out)
    data = Stage2Dataset(out)
    assert len(data) == 3  # one clip per crop span
    sample = data[1]
    assert int(sample["start"]) == 16
    assert sample["crops"].shape == (16, 3, S, S) and sample["masked"].shape == (16, 3, S, S)
    assert sample["mc"].shape == sample["mu"].shape == sample["mask"].shape == (16, 1, S, S)
    assert sample["lips"].shape == (8, 3, 32, 32) and sample["lips"].dtype == torch.float32
    assert sample["audio"].shape == (data.audio_samples,) and sample["audio"].dtype == torch.float32
    assert sample["frame_times"].shape == (16,) and sample["frame_times"].dtype == torch.float64
    crops = (sample["crops"].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(crops, arrays["crops"][16:32])
    assert np.array_equal(sample["mc"][:, 0].numpy(), arrays["mc"][16:32].astype(np.float32))
    assert np.array_equal(sample["mu"][:, 0].numpy(), np.repeat(arrays["mu"][1:2], 16, 0).astype(np.float32) / 255)
    # a worker reopens the memory maps; spawned, so the dataset must pickle, and never forked from this process
    # (its MediaPipe and torch threads from earlier tests once left a forked worker waiting for good, a CI hang);
    # the timeout makes any such hang a failure
    loader = DataLoader(data, batch_size=2, num_workers=1, multiprocessing_context="spawn", timeout=120)
    batch = next(iter(loader))
    assert torch.equal(batch["crops"][1], sample["crops"]) and torch.equal(batch["lips"][1], sample["lips"])
    assert batch["crops"].shape == (2, 16, 3, S, S) and batch["audio"].shape == (2, data.audio_samples)


class _RecordingEncoder(torch.nn.Module):
    """An audio encoder that records its input and returns 50 Hz features of it (sample means)."""

    frame_rate = 50.0
    time_offset = 0.01

    def forward(self, wave):
        self.seen = wave[0].numpy().copy()
        frames = wave.shape[1] // 320 + 1
        padded = torch.nn.functional.pad(wave, (0, frames * 320 - wave.shape[1]))
        return padded.reshape(1, frames, 320)[..., :4]


def test_stage2_audio_window_is_what_inference_cuts_for_those_frames(prepared):
    _, out = prepared
    arrays = shard_arrays(out)
    data = Stage2Dataset(out)
    config = get_preset("tiny")
    wave = arrays["audio"]  # the clip's whole 16 kHz speech (one clip in the shard)
    times = np.arange(FRAMES) / 25.0  # the output frame times of a 25 fps clip
    for i in range(len(data)):
        sample = data[i]
        start = int(sample["start"])
        encoder = _RecordingEncoder()
        fake = types.SimpleNamespace(model=types.SimpleNamespace(audio_encoder=encoder), config=config,
                                     device=torch.device("cpu"))
        expected = StableDubChunkModel._audio_context(fake, wave, times[start:start + 16])  # (16, T, 4)
        length = int(sample["audio_length"])
        assert np.array_equal(sample["audio"][:length].numpy(), encoder.seen)
        assert not sample["audio"][length:].any()
        a, b = audio_segment(len(wave), times[start:start + 16], config.audio.context_seconds)
        assert (int(sample["audio_start"]), length) == (a, b - a)
        # the training step's computation from the sample gives inference's audio context
        features = encoder(sample["audio"][None, :length])[0]
        got = frame_audio_context(features, encoder.frame_rate, sample["frame_times"].numpy(),
                                  config.audio.tokens_per_frame, config.audio.context_seconds,
                                  feature_offset=encoder.time_offset)
        torch.testing.assert_close(got, expected)


def test_stage2_habit_segment_is_disjoint_from_the_clip_and_is_the_pipelines_lip_crops(prepared, face_model_path):
    root, out = prepared
    arrays = shard_arrays(out)
    data = Stage2Dataset(out, habit_frames=8)
    for i in range(len(data)):
        for epoch in (0, 1):
            sample = data[SampleKey(i, epoch, 0.0)]
            start, picks = int(sample["start"]), sample["habit_frames"].numpy()
            assert len(set(picks.tolist())) == 8 and np.array_equal(np.sort(picks), np.arange(picks.min(),
                                                                                              picks.min() + 8))
            assert not ((picks >= start) & (picks < start + 16)).any()
            lips = (sample["lips"].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
            assert np.array_equal(lips, lip_crops(arrays["crops"][picks], arrays["landmarks"][picks], 32))
    # cut from the crops vs inference's cut from the full frames: the same lips up to resampling
    with VideoReader(root / "one.mp4") as reader:
        track = stages.track_faces(reader, face_model_path)
        images = np.stack(list(reader.frames_at([Run(0, reader.num_frames, 1)])))
    picks = data[0]["habit_frames"].numpy()
    from_frames = lip_crops(images[picks], track.landmarks[picks], 32).astype(np.float32)
    from_crops = lip_crops(arrays["crops"][picks], arrays["landmarks"][picks], 32).astype(np.float32)
    difference = np.abs(from_frames - from_crops).mean()  # of 255: the crops were resampled once more
    assert difference < 5, difference  # measured 2.8


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="train preprocess"):
        Stage1Dataset(tmp_path)


def test_latent_masks_are_inferences_and_the_step_seed_depends_on_seed_epoch_and_index(prepared):
    from stabledub_core.masks.exposure import to_latent

    frames, clips = Stage1Dataset(prepared[1]), Stage2Dataset(prepared[1])
    one = frames[SampleKey(7, 0, 0.3)]
    np.testing.assert_array_equal(one["mask_latent"].numpy(), to_latent(one["mask"].numpy(), 8))
    np.testing.assert_array_equal(one["mc_latent"].numpy(), to_latent(one["mc"].numpy(), 8))
    clip = clips[SampleKey(1, 0, 0.0)]
    assert clip["mask_latent"].shape == (16, 1, 16, 16)
    np.testing.assert_array_equal(clip["mc_latent"][:, 0].numpy(), to_latent(clip["mc"][:, 0].numpy(), 8))
    seeds = {frames[SampleKey(i, e, p)]["sample_seed"].item() for i in (3, 4) for e in (0, 1) for p in (0.0, 0.9)}
    assert len(seeds) == 4  # index and epoch change it, the progress does not
    assert Stage1Dataset(prepared[1], seed=1)[SampleKey(3, 0, 0.0)]["sample_seed"] != \
        frames[SampleKey(3, 0, 0.0)]["sample_seed"]

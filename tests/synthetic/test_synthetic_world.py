"""World clips: reproducible from a seed, varied, occluders with exact masks, files that train preprocess keeps,
frames and sound aligned in the written file, cross-audio ground truth."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from conftest import burst
from stabledub_core.errors import DatasetNotFoundError, OptionError
from stabledub_core.media.audio import load_audio
from stabledub_core.media.clip import read_clip
from stabledub_core.synthetic.avatar import AvatarParams, build_avatar, sample_avatar
from stabledub_core.synthetic.estimator import estimate_clip, occluded_share
from stabledub_core.synthetic.habit import archetype_habit
from stabledub_core.synthetic.occluders import KINDS, sample_occluder
from stabledub_core.synthetic.render import render_frame
from stabledub_core.synthetic.world import (
    WORLD_INDEX,
    dub_ground_truth,
    list_speech,
    load_metadata,
    load_occluder_masks,
    render_speech,
    write_world,
    write_world_clip,
)
from stabledub_core.train.preprocess import FilterOptions, preprocess

STATE = {"opening": 0.5, "width": 0.5, "rounding": 0.3, "teeth": 0.5, "tongue": 0.5}


def test_a_seed_gives_the_same_avatar_and_frames(speech):
    waveform, rate = speech
    assert sample_avatar(3).to_dict() == sample_avatar(3).to_dict()
    assert sample_avatar(3).to_dict() != sample_avatar(4).to_dict()
    first = render_speech(sample_avatar(3, size=128), waveform, rate, max_seconds=0.4)
    second = render_speech(sample_avatar(3, size=128), waveform, rate, max_seconds=0.4)
    assert np.array_equal(first.frames, second.frames)
    assert np.array_equal(first.states.as_array(), second.states.as_array())


def test_avatars_vary():
    avatars = [sample_avatar(seed) for seed in range(16)]
    assert len({a.skin for a in avatars}) == 16 and len({a.hair for a in avatars}) == 16
    assert len({a.background["kind"] for a in avatars}) >= 3
    assert len({a.habit.archetype for a in avatars}) >= 3
    assert np.std([a.shape[0] for a in avatars]) > 0.03 and np.std([a.shape[2] for a in avatars]) > 0.02
    still = [build_avatar(sample_avatar(seed, size=128)) for seed in range(2)]
    assert np.abs(still[0].canvas.astype(int) - still[1].canvas.astype(int)).mean() > 10


def test_the_head_moves_smoothly(speech):
    waveform, rate = speech
    clip = render_speech(sample_avatar(5, size=128), waveform, rate, max_seconds=4.0)
    centres = clip.rendered.mouth_poses[:, :2]
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    assert np.ptp(centres, axis=0).max() > 2.0  # it moves
    assert steps.max() < 0.05 * 128  # never a jump
    rolls = np.degrees(clip.rendered.mouth_poses[:, 3])
    assert np.abs(rolls).max() < 8.0


def test_occluders_cover_part_of_the_mouth_with_exact_masks():
    avatar = build_avatar(sample_avatar(11))
    for i, kind in enumerate(KINDS):
        spec = sample_occluder(np.random.default_rng(i), 2.0, avatar.params.skin, kind)
        t = (spec.start_s + spec.end_s) / 2
        clean, none, pose, _ = render_frame(avatar, STATE, t)
        covered, mask, _, _ = render_frame(avatar, STATE, t, spec)
        assert not none.any() and mask.any()
        changed = np.abs(covered.astype(int) - clean.astype(int)).max(-1) > 10
        grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert not (changed & ~grown).any(), kind  # nothing changes outside the mask (but its antialiased rim)
        assert (changed & mask).sum() > 0.9 * mask.sum(), kind  # and the mask is what changed
        share = occluded_share(mask, pose)
        assert 0.03 < share < 0.8, (kind, share)  # in front of the mouth, never all of it
        after, gone, _, _ = render_frame(avatar, STATE, spec.end_s + 0.01, spec)
        assert not gone.any()


def test_world_folder_is_reproducible_and_train_preprocess_keeps_every_clip(tmp_path, speech_dir, face_model_path):
    kwargs = dict(n_clips=3, seed=5, speech_dir=speech_dir, occluder_share=1 / 3, clips_per_avatar=2,
                  max_seconds=2.4)
    videos = write_world(tmp_path / "a", **kwargs)
    write_world(tmp_path / "b", workers=2, **kwargs)  # the same folder, with worker processes too
    for video in videos:
        twin = tmp_path / "b" / video.name
        assert video.with_suffix(".json").read_bytes() == twin.with_suffix(".json").read_bytes()
        assert np.array_equal(read_clip(video).frames, read_clip(twin).frames)
    index = json.loads((tmp_path / "a" / WORLD_INDEX).read_text())
    assert [c["occluder"] is not None for c in index["clips"]].count(True) == 1
    assert index["clips"][0]["avatar_seed"] == index["clips"][1]["avatar_seed"] != index["clips"][2]["avatar_seed"]
    metadata = [load_metadata(v) for v in videos]
    assert metadata[0]["avatar"] == metadata[1]["avatar"] != metadata[2]["avatar"]
    assert all(len(m["mouth_states"]) == m["num_frames"] == 60 for m in metadata)

    result = preprocess(tmp_path / "a", tmp_path / "pre", face_model_path, preset="tiny", options=FilterOptions())
    assert result.report["kept_clips"] == 3, result.report["dropped"]


def test_metadata_and_masks_round_trip_and_sound_stays_aligned(tmp_path):
    rate, fps = 16000, 30000 / 1001
    avatar = dataclasses.replace(sample_avatar(2, size=128),
                                 habit=dataclasses.replace(archetype_habit("wide"), lag_s=0.0, attack_s=0.01,
                                                           release_s=0.01))
    spec = dataclasses.replace(sample_occluder(np.random.default_rng(0), 3.0, avatar.skin, "bar"),
                               start_s=2.0, end_s=2.5)
    clip = render_speech(avatar, burst(rate), rate, fps, spec)
    video = write_world_clip(tmp_path, "burst", clip, seed=9)
    metadata = load_metadata(video)
    assert metadata["avatar"] == avatar and metadata["seed"] == 9 and metadata["occluder"] == spec
    np.testing.assert_allclose(metadata["mouth_states"].as_array(), clip.states.as_array(), atol=1e-4)
    masks = load_occluder_masks(video, metadata)
    assert np.array_equal(masks, clip.rendered.occluder_masks)
    times = np.arange(len(masks)) / fps
    assert np.array_equal(masks.any(axis=(1, 2)), (times >= 2.0) & (times < 2.5))
    assert [b is not None for b in metadata["occluder_boxes"]] == list(masks.any(axis=(1, 2)))

    decoded = read_clip(video)
    assert len(decoded.frames) == len(clip.states) == int(3.0 * fps)
    assert abs(decoded.waveform.shape[1] - round(len(decoded.frames) * rate / fps)) <= 1
    onset = np.argmax(np.abs(decoded.waveform[0]) > 0.05) / rate
    assert abs(onset - 1.0) < 1e-3
    # The decoded pixels open the mouth in the frame at the sound's onset, not a frame early or late.
    est = estimate_clip(decoded.frames, metadata["mouth_poses"], metadata["lit_palette"])
    first_open = times[np.argmax(est.opening > 0.3)]
    assert onset <= first_open <= onset + 1.0 / fps + 1e-6


def test_cross_audio_renders_the_same_avatar_speaking_other_speech(tmp_path, speech_dir):
    video = write_world(tmp_path, 1, seed=3, speech_dir=[speech_dir / "first.wav"], occluder_share=0.0,
                        max_seconds=1.0)[0]  # a list of speech files instead of a folder
    metadata = load_metadata(video)
    assert metadata["speech"]["file"] == "first.wav"
    other = [p for p in list_speech(speech_dir) if p.relative_to(speech_dir).as_posix() != metadata["speech"]["file"]]
    waveform, rate = load_audio(other[0])
    dubbed = render_speech(metadata["avatar"], waveform, rate, metadata["fps"], max_seconds=1.0)
    original = render_speech(metadata["avatar"], *load_audio(speech_dir / metadata["speech"]["file"]),
                             metadata["fps"], max_seconds=1.0)
    np.testing.assert_allclose(original.states.as_array(), metadata["mouth_states"].as_array(), atol=1e-4)
    assert np.allclose(dubbed.rendered.mouth_poses, original.rendered.mouth_poses)  # same head, same motion
    assert np.abs(dubbed.states.opening - original.states.opening).mean() > 0.05  # other words
    corner = (slice(0, 12), slice(0, 12))
    assert np.array_equal(dubbed.frames[:, corner[0], corner[1]], original.frames[:, corner[0], corner[1]])
    # The ground truth of a dub: as many frames as the source clip, whatever the new speech's length.
    short = dub_ground_truth(metadata, waveform[:, :rate // 2], rate)
    assert len(short.states) == metadata["num_frames"] and short.occluder == metadata["occluder"]
    assert short.waveform.shape[1] == round(metadata["num_frames"] * rate / metadata["fps"])
    assert short.states.opening[-5:].max() < 0.1  # silence after the half second of speech
    assert short.states.opening[:12].max() > 0.3  # and speech before


def test_bad_world_arguments_raise_clear_errors(tmp_path, speech_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError):
        list_speech(tmp_path / "empty")
    with pytest.raises(DatasetNotFoundError):
        list_speech(tmp_path / "missing")
    with pytest.raises(OptionError):
        sample_avatar(0, size=64)
    with pytest.raises(OptionError):
        write_world(tmp_path / "w", 1, 0, speech_dir, occluder_share=1.5)
    with pytest.raises(OptionError):
        write_world(tmp_path / "w", 0, 0, speech_dir)
    with pytest.raises(OptionError):
        write_world(tmp_path / "w", 1, 0, speech_dir, workers=0)
    with pytest.raises(DatasetNotFoundError):
        write_world(tmp_path / "w", 1, 0, [speech_dir / "first.wav", speech_dir / "gone.wav"])
    assert AvatarParams.from_dict(sample_avatar(1).to_dict()) == sample_avatar(1)

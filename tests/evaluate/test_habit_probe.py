"""``bench/habit_probe.py``: the token-change measure on modules whose answer is known, and a whole probe run on a
three-avatar world with a random tiny model."""

import sys

import pytest
import torch
from torch import nn

from helpers.bench import bench_module
from helpers.repo_media import ASSETS
from stabledub_core.media.audio import load_audio
from stabledub_core.media.clip import write_wav
from stabledub_core.models.checkpoint import save_checkpoint
from stabledub_core.models.config import get_preset
from stabledub_core.models.habit import LipHabitModulation
from stabledub_core.models.stabledub import StableDub
from stabledub_core.synthetic.habit import ARCHETYPES, archetype_habit
from stabledub_core.synthetic.world import load_metadata, write_world


@pytest.fixture(scope="module")
def probe():
    yield from bench_module("habit_probe")


def _modulation(seed: int = 0) -> LipHabitModulation:
    torch.manual_seed(seed)
    module = LipHabitModulation(get_preset("tiny").habit, audio_feature_size=16).eval()
    for layer in (module.scale, module.shift, module.out_conv):
        nn.init.normal_(layer.weight, std=0.3)
    return module


def test_token_changes_see_the_habit_only_where_the_modulation_uses_it(probe):
    module = _modulation()
    c, pool = module.config.hidden_size, module.config.audio_pool
    contexts = [torch.randn(5 + i, 2 * pool, 16) for i in range(4)]  # (F, T, C_a), clips of different lengths
    vectors = [torch.randn(c) for _ in range(4)]
    changes = probe.token_changes(module, contexts, vectors)
    assert all(changes[k] > 0.01 for k in ("habit_swap", "habit_drop", "audio_swap")), changes
    # AdaLN whose scale and shift ignore v: swapping or dropping the habit leaves every token as it was
    nn.init.zeros_(module.scale.weight), nn.init.zeros_(module.shift.weight)
    changes = probe.token_changes(module, contexts, vectors)
    assert changes["habit_swap"] == 0 and changes["habit_drop"] == 0 and changes["audio_swap"] > 0.01


def test_a_probe_run_measures_every_feature_set_per_avatar(probe, tmp_path):
    wave, rate = load_audio(ASSETS / "speech_es.wav")
    speech = tmp_path / "speech"
    speech.mkdir()
    write_wav(speech / "a.wav", wave[:, :2 * rate], rate)
    write_wav(speech / "b.wav", wave[:, 2 * rate:4 * rate], rate)
    world = tmp_path / "world"
    write_world(world, 3 * probe.CLIPS_PER_AVATAR, seed=9, speech_dir=speech, occluder_share=0.0,
                clips_per_avatar=probe.CLIPS_PER_AVATAR, max_seconds=1.2)
    torch.manual_seed(0)
    model = save_checkpoint(StableDub.from_config(get_preset("tiny")), tmp_path / "tiny.safetensors")
    results = probe.measure(model, world, ASSETS / "face_landmarker.task")
    assert results["clips"] == 6 and results["avatars"] == 3
    assert sum(results["archetypes"].values()) == 3
    assert set(results["probes"]) == {"trained", "untrained", "pixels"}
    for scores in results["probes"].values():
        assert set(scores["r2"]) == set(probe.FIELDS)
        assert 0 <= scores["archetype_accuracy"] <= 1 and scores["within_between_ratio"] > 0
        assert scores["relative_spread"] > 0
    # a fresh model's output convolution is zero: every token is the same, whatever the speech or habit
    assert results["token_change"] == {"habit_swap": 0.0, "habit_drop": 0.0, "audio_swap": 0.0}
    assert "| pixels |" in probe.table(results)
    change = results["target_change"]
    assert change["habit_pixels"] > 0 and change["speech_pixels"] > 0 and change["habit_share_pixels"] > 0
    assert "target change" in probe.table(results)


def test_the_target_change_is_zero_for_the_clips_own_habit_and_speech(probe, tmp_path):
    wave, rate = load_audio(ASSETS / "speech_es.wav")
    speech = tmp_path / "speech"
    speech.mkdir()
    write_wav(speech / "a.wav", wave[:, :rate], rate)
    write_world(tmp_path / "world", 2, seed=9, speech_dir=speech, occluder_share=0.0, max_seconds=0.8)
    metas = [load_metadata(p) for p in sorted((tmp_path / "world").glob("clip_*.json"))]
    own, other = (wave[:, :rate], rate), (wave[:, 2 * rate:3 * rate], rate)
    same = probe.target_change(metas[0], own, metas[0]["avatar"].habit, own)
    assert same == {"habit_pixels": 0.0, "speech_pixels": 0.0, "habit_states": 0.0, "speech_states": 0.0}
    moved = probe.target_change(metas[0], own, archetype_habit(
        next(a for a in ARCHETYPES if a != metas[0]["avatar"].habit.archetype)), other)
    assert all(v > 0 for v in moved.values()), moved


@pytest.mark.parametrize("argv, option", [(["--corpus", "nowhere"], "--corpus"), (["--avatars", "2"], "--avatars")])
def test_bad_arguments_are_usage_errors_before_any_work(probe, tmp_path, monkeypatch, capsys, argv, option):
    argv = [a.replace("nowhere", str(tmp_path / "nowhere")) for a in argv]
    if "--corpus" not in argv:
        argv += ["--corpus", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["habit_probe.py", *argv, "--work", str(tmp_path / "work")])
    with pytest.raises(SystemExit) as stop:
        probe.main()
    assert stop.value.code == 2
    assert option in capsys.readouterr().err
    assert not (tmp_path / "work").exists()

"""In-clip negatives of the sync scorer (``train sync --sync-negatives``): each stack is also scored against its own
clip's speech shifted by a few frames, so the scorer must learn timing, not only who speaks. The draws are the clip's
real speech at the shifts, reproducible per sample; the shifted logits join each stack's softmax row; the options are
checked before a run writes anything."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from stabledub_core.errors import OptionError
from stabledub_core.models.sync_scorer import MAX_OFFSET, SyncScorer, SyncScorerConfig, audio_windows, stack_centres
from stabledub_core.train.config import TrainOptions
from stabledub_core.train.datasets import SampleKey, SyncDataset
from stabledub_core.train.engine import train
from stabledub_core.train.objectives import SyncLosses, SyncObjective, SyncShiftLosses


def test_the_negatives_are_the_clips_own_speech_at_distinct_shifts(prepared):
    config = SyncScorerConfig()
    plain = SyncDataset(prepared[1], config)
    hard = SyncDataset(prepared[1], config, negatives=6, min_shift=3)
    item, same = hard[SampleKey(4, 0, 0.0)], plain[SampleKey(4, 0, 0.0)]
    assert torch.equal(item["lips"], same["lips"]) and torch.equal(item["audio"], same["audio"])
    shifts = item["negative_shifts"].numpy()
    assert item["negative_audio"].shape == (6, config.audio_samples) and len(set(shifts.tolist())) == 6
    assert (np.abs(shifts) >= 3).all() and (np.abs(shifts) <= MAX_OFFSET).all()
    start = int(item["start"])
    expected = audio_windows(hard.data.audio(int(item["clip"])), stack_centres(start + shifts, config),
                             config.audio_samples)
    np.testing.assert_array_equal(item["negative_audio"].numpy(), expected)
    assert not any(np.array_equal(row, item["audio"].numpy()) for row in expected)  # never the aligned speech
    again = hard[SampleKey(4, 0, 0.0)]["negative_shifts"]
    assert torch.equal(again, item["negative_shifts"])  # reproducible per sample
    draws = {tuple(hard[SampleKey(4, epoch, 0.0)]["negative_shifts"].tolist()) for epoch in range(6)}
    assert len(draws) > 1  # and drawn afresh each epoch
    with pytest.raises(OptionError, match="ask for at most that many"):
        SyncDataset(prepared[1], config, negatives=29, min_shift=2)


def test_the_shifted_logits_join_each_stacks_softmax_row(prepared):
    torch.manual_seed(0)
    scorer = SyncScorer(SyncScorerConfig())
    dataset = SyncDataset(prepared[1], scorer.config, negatives=4)
    batch = default_collate([dataset[SampleKey(i, 0, 0.0)] for i in (0, 5, 9)])
    losses = SyncObjective(scorer)(batch)
    assert isinstance(losses, SyncShiftLosses) and losses.shifted > 0
    video, audio = scorer.embed_lips(batch["lips"]), scorer.embed_audio(batch["audio"])
    shifted = scorer.embed_audio(batch["negative_audio"].flatten(0, 1)).view(3, 4, -1)
    logits = video @ audio.T / 0.07
    rows = torch.cat([logits, torch.einsum("bd,bnd->bn", video, shifted) / 0.07], 1)
    targets = torch.arange(3)
    expected = (F.cross_entropy(rows, targets) + F.cross_entropy(logits.T, targets)) / 2
    assert torch.allclose(losses.total, expected, atol=1e-5)
    batch_only = {k: v for k, v in batch.items() if not k.startswith("negative_")}
    plain = SyncObjective(scorer)(batch_only)
    assert isinstance(plain, SyncLosses) and plain.total < losses.total  # more negatives, a harder softmax
    losses.total.backward()
    assert scorer.audio[0].weight.grad.abs().sum() > 0


def test_the_option_is_checked_and_a_run_logs_the_shifted_distance(prepared, tmp_path):
    with pytest.raises(OptionError, match="option of `train sync`"):
        train("stage2", prepared[1], tmp_path / "refused", TrainOptions(preset="tiny", sync_negatives=4))
    assert not (tmp_path / "refused").exists()
    with pytest.raises(OptionError, match="ask for at most that many"):
        train("sync", prepared[1], tmp_path / "too_many", TrainOptions(sync_negatives=29, max_steps=1))
    options = TrainOptions(max_steps=2, batch_size=4, sync_negatives=3)
    assert train("sync", prepared[1], tmp_path / "run", options).step == 2
    with open(tmp_path / "run" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(float(row["loss_shifted"]) > 0 for row in rows)

"""The data order: a function of (seed, epoch, step), disjoint per process, equal to one process's global batch."""

from __future__ import annotations

import numpy as np
import pytest

from stabledub_core.errors import OptionError
from stabledub_core.train.sampling import GlobalBatchSampler


def keys(sampler, step):
    return [[k.index for k in micro] for micro in sampler.micro_batches(step)]


def test_two_processes_read_disjoint_parts_of_exactly_one_processs_global_batch():
    one = GlobalBatchSampler(50, batch_size=4, grad_accumulation=2, world_size=1, rank=0, seed=3, max_steps=20)
    ranks = [GlobalBatchSampler(50, batch_size=2, grad_accumulation=2, world_size=2, rank=r, seed=3, max_steps=20)
             for r in (0, 1)]
    for step in range(8):  # crosses an epoch boundary (6 steps of 8 per epoch)
        single = keys(one, step)
        split = [keys(s, step) for s in ranks]
        for m in range(2):  # each micro-step: the ranks' parts are disjoint and together make one process's part
            assert not set(split[0][m]) & set(split[1][m])
            assert sorted(split[0][m] + split[1][m]) == sorted(single[m])
    assert one.steps_per_epoch == 6


def test_every_epoch_is_a_permutation_and_the_order_depends_on_the_seed_only():
    sampler = GlobalBatchSampler(24, 4, 1, 1, 0, seed=1, max_steps=12)
    epoch0 = np.concatenate([sampler.global_indices(s) for s in range(6)])
    epoch1 = np.concatenate([sampler.global_indices(s) for s in range(6, 12)])
    assert sorted(epoch0) == list(range(24)) and sorted(epoch1) == list(range(24))
    assert not np.array_equal(epoch0, epoch1)
    again = GlobalBatchSampler(24, 4, 1, 1, 0, seed=1, max_steps=12)
    assert np.array_equal(again.global_indices(7), sampler.global_indices(7))
    assert not np.array_equal(GlobalBatchSampler(24, 4, 1, 1, 0, seed=2, max_steps=12).global_indices(0),
                              sampler.global_indices(0))


def test_resuming_at_a_step_yields_what_the_whole_run_yields_from_there():
    whole = list(GlobalBatchSampler(30, 2, 3, 1, 0, seed=0, max_steps=10))
    resumed = list(GlobalBatchSampler(30, 2, 3, 1, 0, seed=0, max_steps=10, start_step=4))
    assert resumed == whole[4 * 3:]
    assert len(GlobalBatchSampler(30, 2, 3, 1, 0, seed=0, max_steps=10, start_step=4)) == 18


def test_progress_runs_from_0_at_the_first_step_to_1_at_the_last():
    sampler = GlobalBatchSampler(10, 1, 1, 1, 0, seed=0, max_steps=5)
    assert [sampler.micro_batches(s)[0][0].progress for s in range(5)] == [0, 0.25, 0.5, 0.75, 1.0]


def test_too_little_data_for_one_global_batch_is_a_clear_error():
    with pytest.raises(OptionError, match="fewer than one global batch"):
        GlobalBatchSampler(5, batch_size=2, grad_accumulation=2, world_size=2, rank=0, seed=0, max_steps=1)

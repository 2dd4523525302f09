"""The data order of training: a pure function of (seed, epoch, step), split into disjoint parts per process.

Epoch ``e`` visits the dataset in the permutation ``default_rng([seed, e]).permutation(len(dataset))``, cut into
global batches of ``global_batch`` samples (the last incomplete one is dropped). Optimizer step ``s`` takes global
batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``; its micro-step ``m`` takes the samples
``[m * per_micro, (m + 1) * per_micro)`` of the global batch (``per_micro = batch_size * world_size``) and process
``r`` of them every ``world_size``-th from ``r``. So the processes read disjoint samples, together they read exactly
what one process with the same global batch reads, and resuming at step ``s`` needs nothing but ``s``.

Each sample is a :class:`~stabledub_core.train.datasets.SampleKey` ``(index, epoch, progress)`` with ``progress =
s / max_steps``, which sets the progressive exposure rate inside the ``DataLoader`` workers.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler

from stabledub_core.errors import OptionError
from stabledub_core.train.datasets import SampleKey


class GlobalBatchSampler(Sampler):
    """Yields this process's micro-batches (lists of ``SampleKey``) from ``start_step`` to ``max_steps``.

    Args:
        length: dataset length.
        batch_size: samples per process per micro-step.
        grad_accumulation: micro-steps per optimizer step.
        world_size: number of processes; rank: this process.
        seed: seed of the permutations.
        max_steps: optimizer steps of the run (also the denominator of ``progress``).
        start_step: first optimizer step to yield (resume).
    """

    def __init__(self, length: int, batch_size: int, grad_accumulation: int, world_size: int, rank: int,
                 seed: int, max_steps: int, start_step: int = 0):
        self.length, self.batch_size, self.accumulation = int(length), int(batch_size), int(grad_accumulation)
        self.world_size, self.rank, self.seed = int(world_size), int(rank), int(seed)
        self.max_steps, self.start_step = int(max_steps), int(start_step)
        self.global_batch = self.batch_size * self.accumulation * self.world_size
        if self.length < self.global_batch:
            raise OptionError(f"the dataset has {self.length} samples, fewer than one global batch of "
                              f"{self.global_batch} (batch_size {self.batch_size} x grad_accumulation "
                              f"{self.accumulation} x {self.world_size} processes): lower the batch size or add data")
        if not 0 <= self.rank < self.world_size:
            raise OptionError(f"rank {self.rank} outside 0..{self.world_size - 1}")
        self.steps_per_epoch = self.length // self.global_batch

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def global_indices(self, step: int) -> np.ndarray:
        """The ``global_batch`` dataset indices of optimizer step ``step`` (all processes together)."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.length)
        return order[position * self.global_batch:(position + 1) * self.global_batch]

    def micro_batches(self, step: int) -> list[list[SampleKey]]:
        """This process's micro-batches of optimizer step ``step``."""
        indices = self.global_indices(step)
        per_micro = self.batch_size * self.world_size
        progress = step / max(self.max_steps - 1, 1)  # 0 at the first step, 1 at the last
        epoch = self.epoch_of(step)
        return [[SampleKey(int(i), epoch, progress)
                 for i in indices[m * per_micro:(m + 1) * per_micro][self.rank::self.world_size]]
                for m in range(self.accumulation)]

    def __iter__(self):
        for step in range(self.start_step, self.max_steps):
            yield from self.micro_batches(step)

    def __len__(self) -> int:
        return max(self.max_steps - self.start_step, 0) * self.accumulation

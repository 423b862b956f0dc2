"""Sharded in-memory batching for torchrun: each rank takes its slice of every global batch.

All ranks draw the SAME permutation each epoch (same seed, same generator, nothing else consumes
it), cut it into global batches of `batch_size`, and rank r takes the r-th of world_size equal
slices of each. So the union of the ranks' batches at step k is exactly the single-process batch
k: with gradients averaged by DDP the update is the single-process one (up to float summation
order). `batch_size` is therefore the GLOBAL batch, and must be divisible by the number of ranks.

Indices stay positions in the whole split, so teacher logits cached by sample index need no change.
Evaluation splits are cut into one contiguous slice per rank; counts are summed across ranks by the
loop. `num_samples` is the global count, which is what the loop divides the summed counts by.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch

from kdrun.data.base import Split
from kdrun.data.batches import InMemoryBatches
from kdrun.errors import ConfigError
from kdrun.training import distributed


class ShardedBatches(InMemoryBatches):
    """This rank's share of an InMemoryBatches; the step count is identical on every rank (DDP needs it).

    A last global batch too small to give every rank 2 samples is skipped (a rank with none would
    stall DDP, BatchNorm cannot train on one): at most 2 x world_size - 1 samples per epoch,
    different ones every epoch since the order is reshuffled. A single process skips only a
    trailing batch of one sample, so runs with such a remainder differ in those samples.
    """

    def __init__(self, split: Split, mean: list[float], std: list[float], batch_size: int, device: torch.device,
                 shuffle: bool, seed: int = 0,
                 augment: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = None) -> None:
        super().__init__(split, mean, std, batch_size, device, shuffle, seed, augment)
        self.rank = distributed.topology().rank
        self.world_size = distributed.topology().world_size
        # Augmentation draws from its own per-rank generator: the permutation generator must stay
        # in step across ranks, and ranks should not apply the same random crops to their shards.
        self.augment_generator = torch.Generator().manual_seed(seed * 1_000_003 + self.rank + 1)
        self.global_batch_size = batch_size  # training: cut into world_size shards; evaluation: per rank
        if shuffle:
            self.batch_size = batch_size // self.world_size
        self.current_global_size = batch_size
        self.smallest_last_batch = 2 * self.world_size

    def __len__(self) -> int:
        if not self.shuffle:
            own = len(self._evaluation_share(torch.device("cpu")))
            return (own + self.batch_size - 1) // self.batch_size
        full, rest = divmod(len(self.labels), self.global_batch_size)
        return full + (1 if rest >= self.smallest_last_batch else 0)

    @property
    def num_samples(self) -> int:
        """Samples per epoch over ALL ranks (what the loop divides the summed counts by)."""
        count = len(self.labels)
        if not self.shuffle:
            return count
        rest = count % self.global_batch_size
        return count - (rest if rest < self.smallest_last_batch else 0)

    def index_batches(self, device: Optional[torch.device] = None) -> Iterator[torch.Tensor]:
        """This rank's slice of every global batch (training), or of its contiguous share (evaluation)."""
        device = device or self.device
        if not self.shuffle:
            share = self._evaluation_share(device)
            for start in range(0, len(share), self.batch_size):
                yield share[start : start + self.batch_size]
            return
        count = len(self.labels)
        order = torch.randperm(count, generator=self.generator).to(device)
        for start in range(0, count, self.global_batch_size):
            global_batch = order[start : start + self.global_batch_size]
            if len(global_batch) < self.smallest_last_batch:
                break
            self.current_global_size = len(global_batch)  # read by DistributedObjective to weight this step
            yield torch.tensor_split(global_batch, self.world_size)[self.rank]

    def _evaluation_share(self, device: torch.device) -> torch.Tensor:
        return torch.tensor_split(torch.arange(len(self.labels), device=device), self.world_size)[self.rank]


def sum_over_ranks(batches: InMemoryBatches, term_sums: dict, correct: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Loss sums and correct counts over all ranks when `batches` was this rank's share; else as they are.

    Batches that are not sharded (e.g. compression's own evaluation batches) were seen whole by
    every rank, so their counts are already totals and must not be summed again.
    """
    if not isinstance(batches, ShardedBatches):
        return term_sums, correct
    return distributed.sum_across_ranks(term_sums, correct)


def check_global_batch(batch_size: int, shuffle: bool) -> None:
    """Raises ConfigError when the global training batch does not split evenly over the ranks."""
    world_size = distributed.topology().world_size
    if shuffle and batch_size % world_size:
        raise ConfigError(
            f"batch_size={batch_size} does not split over {world_size} processes",
            f"batch_size is the global batch: use a multiple of {world_size}",
        )

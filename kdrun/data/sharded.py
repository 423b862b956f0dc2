"""Sharded in-memory batching for torchrun: each rank takes its slice of every global batch.

All ranks draw the SAME permutation each epoch (same seed, same generator, nothing else consumes
it), cut it into global batches of `batch_size`, and rank r takes the r-th of world_size equal
slices of each. So the union of the ranks' batches at step k is exactly the single-process batch
k: with gradients averaged by DDP the update is the single-process one (up to float summation
order). `batch_size` is therefore the GLOBAL batch, and must be divisible by the number of ranks.

Indices stay positions in the whole split, so teacher logits cached by sample index need no change.
Evaluation splits are cut into one contiguous slice per rank; counts are summed across ranks by the
loop. `num_samples` is the global count, which is what the loop divides the summed counts by.
The rank and world size come in as a plain `Topology` value: this module starts no process group.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch

from kdrun.data.base import Split
from kdrun.data.batches import InMemoryBatches
from kdrun.errors import ConfigError
from kdrun.parallel import SINGLE, Topology


class ShardedBatches(InMemoryBatches):
    """This rank's share of an InMemoryBatches; the step count is identical on every rank (DDP needs it).

    A last global batch too small to give every rank 2 samples is skipped (a rank with none would
    stall DDP, BatchNorm cannot train on one): at most 2 x world_size - 1 samples per epoch,
    different ones every epoch since the order is reshuffled. A single process skips only a
    trailing batch of one sample, so runs with such a remainder differ in those samples.
    """

    def __init__(self, split: Split, mean: list[float], std: list[float], batch_size: int, device: torch.device,
                 shuffle: bool, seed: int = 0,
                 augment: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = None,
                 topology: Topology = SINGLE) -> None:
        super().__init__(split, mean, std, batch_size, device, shuffle, seed, augment)
        self.topology = topology
        self.rank = topology.rank
        self.world_size = topology.world_size
        # Augmentation draws from its own per-rank generator: the permutation generator must stay
        # in step across ranks, and ranks should not apply the same random crops to their shards.
        self.augment_generator = torch.Generator().manual_seed(seed * 1_000_003 + self.rank + 1)
        self.global_batch_size = batch_size  # training: cut into world_size shards; evaluation: per rank
        if shuffle:
            self.batch_size = batch_size // self.world_size
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

    def index_batches(self, device: Optional[torch.device] = None) -> Iterator[tuple[torch.Tensor, Optional[int]]]:
        """This rank's slice of every global batch with that batch's size (training), or of its contiguous
        share (evaluation, whose counts are summed over the ranks)."""
        device = device or self.device
        if not self.shuffle:
            share = self._evaluation_share(device)
            for start in range(0, len(share), self.batch_size):
                yield share[start : start + self.batch_size], None
            return
        count = len(self.labels)
        order = torch.randperm(count, generator=self.generator).to(device)
        for start in range(0, count, self.global_batch_size):
            global_batch = order[start : start + self.global_batch_size]
            if len(global_batch) < self.smallest_last_batch:
                break
            yield torch.tensor_split(global_batch, self.world_size)[self.rank], len(global_batch)  # DDP weights each rank by its share

    def _evaluation_share(self, device: torch.device) -> torch.Tensor:
        return torch.tensor_split(torch.arange(len(self.labels), device=device), self.world_size)[self.rank]


def check_global_batch(batch_size: int, shuffle: bool, world_size: int) -> None:
    """Raises ConfigError when the global training batch does not split evenly over the ranks."""
    if shuffle and batch_size % world_size:
        raise ConfigError(
            f"batch_size={batch_size} does not split over {world_size} processes",
            f"batch_size is the global batch: use a multiple of {world_size}",
        )

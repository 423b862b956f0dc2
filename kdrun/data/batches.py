"""Batching by index from tensors already in memory (on the training device).

For data that fits in memory this replaces a per-sample DataLoader: one uint8 copy lives on the
device, each batch is gathered by index and normalised there. Every batch carries the sample
indices, so anything cached per sample (e.g. teacher logits) is looked up by index, never by
batch position (the bug in recipe R3).
"""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple, Optional

import torch

from kdrun.data.base import Split
from kdrun.parallel import SINGLE, Topology


class Batch(NamedTuple):
    inputs: torch.Tensor   # (B, C, H, W) float, normalised
    targets: torch.Tensor  # (B,) int64
    indices: torch.Tensor  # (B,) int64, positions in the split
    global_size: Optional[int] = None  # under torchrun: this step's samples over all ranks; None = the batch is the step


class InMemoryBatches:
    """An iterable of Batches over one split; reshuffled every epoch from its own seeded generator."""

    topology: Topology = SINGLE  # one process sees the whole split (ShardedBatches: this rank's share)

    def __init__(
        self,
        split: Split,
        mean: list[float],
        std: list[float],
        batch_size: int,
        device: torch.device,
        shuffle: bool,
        seed: int = 0,
        augment: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = None,
    ) -> None:
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.augment = augment  # applied to uint8 images before normalising (training split only)
        self.augment_generator = self.generator  # one stream: order, then each batch's augmentation
        self.scale, self.shift = normalisation(mean, std, device)
        self.hold(split)

    def hold(self, split: Split) -> None:
        """Keep the split's data where batches are made from it: here, one uint8 copy on the device."""
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)

    def __len__(self) -> int:
        return (self.num_samples + self.batch_size - 1) // self.batch_size

    @property
    def num_samples(self) -> int:
        """Samples per pass. Training skips a trailing batch of ONE sample: BatchNorm cannot train on a
        single sample, and since the order is reshuffled every epoch no sample is left out for good."""
        count = len(self.labels)
        return count - 1 if self.shuffle and count > 1 and count % self.batch_size == 1 else count

    def __iter__(self) -> Iterator[Batch]:
        for indices, global_size in self.index_batches():
            yield self._batch(indices, global_size)

    def index_batches(self, device: Optional[torch.device] = None) -> Iterator[tuple[torch.Tensor, Optional[int]]]:
        """Each step's sample indices: the epoch's seeded permutation (training) or the split in order.

        With each comes the step's global batch size (None here: this process's batch is the whole step).
        """
        device = device or self.device
        count = len(self.labels)
        if self.shuffle:
            order = torch.randperm(count, generator=self.generator).to(device)
        else:
            order = torch.arange(count, device=device)
        for start in range(0, self.num_samples, self.batch_size):
            yield order[start : start + self.batch_size], None

    def _batch(self, indices: torch.Tensor, global_size: Optional[int] = None) -> Batch:
        images = self.images.index_select(0, indices)  # the same gather as images[indices], 4x less overhead
        if self.augment is not None:
            images = self.augment(images, self.augment_generator)
        return Batch(self.normalise(images), self.labels.index_select(0, indices), indices, global_size)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)


def normalisation(mean: list[float], std: list[float], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with /255 folded in: x_norm = x_uint8 * scale + shift, one fused op per batch."""
    std_tensor = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    mean_tensor = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return 1.0 / (255.0 * std_tensor), -mean_tensor / std_tensor

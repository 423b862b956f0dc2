"""Batches of image files decoded by DataLoader workers, for class-folder trees too large for memory.

StreamingBatches is a drop-in for InMemoryBatches: the same seeded permutation per epoch (drawn
in the main process from the same generator), the same batches, the same augmentation and
normalisation on the device, the same sample indices. So a streamed run trains on exactly the
batches an in-memory run would (tests/test_streaming.py compares the metrics). Worker processes
decode (persistent across epochs, prefetching), pinned memory feeds a GPU.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from kdrun.data.augment import Augmentation
from kdrun.data.base import Split
from kdrun.data.batches import Batch, InMemoryBatches
from kdrun.data.image_files import ImageFiles
from kdrun.data.sharded import ShardedBatches, check_global_batch
from kdrun.errors import ConfigError
from kdrun.parallel import SINGLE, Topology

PREFETCH_BATCHES_PER_WORKER = 4
log = logging.getLogger(__name__)


class DecodedFiles(Dataset):
    """Sample i = (uint8 image, label, i, readable); an unreadable file is reported, not raised, so the
    main process can name it in a one-line error (a worker's exception would arrive as a traceback)."""

    def __init__(self, files: ImageFiles, labels: torch.Tensor) -> None:
        self.files = files
        self.labels = labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
        image = self.files.decode(row)
        readable = image is not None
        if image is None:
            image = torch.zeros(self.files.shape[1:], dtype=torch.uint8)
        return image, self.labels[row], row, readable


class EpochOrder:
    """The DataLoader's batch sampler: the owner's index batches for one epoch, as lists.

    The loader runs ahead of training (prefetch), so each batch's global size under torchrun is
    queued here and taken back by the owner when that batch is yielded (into Batch.global_size).
    """

    def __init__(self, owner: "StreamingBatches") -> None:
        # A weak reference: owner -> loader -> sampler -> owner would be a cycle, and a dropped
        # StreamingBatches would keep its worker processes until the cyclic GC ran, possibly inside a
        # freshly forked worker of another loader (which then fails to stop processes it does not own).
        self.owner = weakref.proxy(owner)

    def __len__(self) -> int:
        return len(self.owner)

    def __iter__(self) -> Iterator[list[int]]:
        owner = self.owner
        for indices, global_size in owner.index_batches(torch.device("cpu")):
            owner.global_sizes.append(global_size)
            yield indices.tolist()


class StreamingBatches(InMemoryBatches):
    """An iterable of Batches over a split of ImageFiles; see the module docstring."""

    def hold(self, split: Split) -> None:
        """Keep the file list (decoded per batch by the loader's workers); labels stay on the CPU for them."""
        self.files: ImageFiles = split.images
        self.labels = split.labels
        self.global_sizes: deque[Optional[int]] = deque()
        self.unreadable: set[int] = set()  # rows left out with skip_bad_files (found while streaming)
        self.loader = self._loader()

    @property
    def num_samples(self) -> int:
        """Samples per pass, without the unreadable files met so far (the loop divides by it after the pass)."""
        return super().num_samples - len(self.unreadable)

    def _loader(self) -> DataLoader:
        workers = self.files.workers
        return DataLoader(
            DecodedFiles(self.files, self.labels),
            batch_sampler=EpochOrder(self),
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=PREFETCH_BATCHES_PER_WORKER if workers > 0 else None,
            generator=torch.Generator(),  # its worker seeds must not draw from torch's global generator (dropout)
        )

    def __iter__(self) -> Iterator[Batch]:
        self.global_sizes.clear()
        for images, labels, rows, readable in self.loader:
            global_size = self.global_sizes.popleft()  # this batch's, however far the loader has read ahead
            if not bool(readable.all()):
                images, labels, rows = self._without_unreadable(images, labels, rows, readable)
                if len(rows) == 0:
                    if self.topology.sharded:
                        raise ConfigError("every file of one of this rank's batches is unreadable",
                                          "remove the unreadable files: under torchrun every rank must take every step")
                    continue
            images = images.to(self.device, non_blocking=True)
            if self.augment is not None:
                images = self.augment(images, self.augment_generator)
            rows = rows.to(self.device, non_blocking=True)
            yield Batch(self.normalise(images), labels.to(self.device, non_blocking=True), rows, global_size)

    def _without_unreadable(self, images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, readable: torch.Tensor):
        """Drops the unreadable files of a batch with skip_bad_files; otherwise names the first one.

        Raises:
            ConfigError: naming the file, when skip_bad_files is off.
        """
        bad_rows = rows[~readable].tolist()
        if not self.files.skip_bad_files:
            raise ConfigError(f"cannot read image file {self.files.paths[bad_rows[0]]}",
                              "remove or replace it, or set dataset.skip_bad_files=true to skip unreadable files")
        for row in set(bad_rows) - self.unreadable:
            log.warning("skipping unreadable image file %s", self.files.paths[row])
        self.unreadable.update(bad_rows)
        return images[readable], labels[readable], rows[readable]


class ShardedStreamingBatches(StreamingBatches, ShardedBatches):
    """Under torchrun: this rank's share of every batch (ShardedBatches' order), decoded by its own workers."""

    @property
    def num_samples(self) -> int:
        """The global count (each rank only knows its own unreadable files, so none are subtracted)."""
        return ShardedBatches.num_samples.fget(self)


def batches_for_this_rank(split: Split, mean: list[float], std: list[float], batch_size: int, device: torch.device,
                          shuffle: bool, seed: int = 0, augment: Optional[Augmentation] = None,
                          topology: Topology = SINGLE) -> InMemoryBatches:
    """The batches of a split for this process: in memory or streamed, whole or (several ranks) this rank's share.

    Raises:
        ConfigError: under torchrun, when the global training batch does not split evenly over the ranks.
    """
    streamed = isinstance(split.images, ImageFiles)
    if topology.sharded:
        check_global_batch(batch_size, shuffle, topology.world_size)
        make = ShardedStreamingBatches if streamed else ShardedBatches
        return make(split, mean, std, batch_size, device, shuffle, seed, augment, topology)
    make = StreamingBatches if streamed else InMemoryBatches
    return make(split, mean, std, batch_size, device, shuffle, seed, augment)


def in_order_batches(split: Split, mean: list[float], std: list[float], batch_size: int, device: torch.device,
                     seed: int = 0) -> InMemoryBatches:
    """Unshuffled batches of a whole split, in memory or streamed, on every rank (teacher logits, compression)."""
    make = StreamingBatches if isinstance(split.images, ImageFiles) else InMemoryBatches
    return make(split, mean, std, batch_size, device, False, seed=seed)

"""Image files decoded when a batch needs them: the stand-in for a uint8 (N, 3, S, S) tensor when a
class-folder tree decoded at `image_size` would not fit in memory (`dataset.in_memory`).

An ImageFiles supports what the split code does with an image tensor (length, `shape`, `nbytes`,
selecting rows by an index tensor), so train/val carving and trimming work unchanged; batches come
from a DataLoader with worker processes (kdrun/data/streaming.py).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy
import torch

from kdrun.data.images import decode_image, decode_images

STATISTICS_SAMPLE = 2_000  # images decoded to estimate the per-channel mean and std of a streamed split


class ImageFiles:
    """An ordered list of image files, each decoded to (3, image_size, image_size) uint8 on demand."""

    def __init__(self, paths: Sequence[Path], image_size: int, workers: int, skip_bad_files: bool) -> None:
        self.paths = list(paths)
        self.image_size = image_size
        self.workers = workers  # DataLoader worker processes for batches of these files
        self.skip_bad_files = skip_bad_files  # an unreadable file is left out of its batch instead of stopping the run

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, rows: torch.Tensor | Sequence[int]) -> "ImageFiles":
        """The files at `rows` (an index tensor or list), in that order."""
        return ImageFiles([self.paths[int(row)] for row in rows], self.image_size, self.workers, self.skip_bad_files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return len(self.paths), 3, self.image_size, self.image_size

    @property
    def nbytes(self) -> int:
        """What the decoded uint8 images would take in memory."""
        return len(self.paths) * 3 * self.image_size * self.image_size

    def decode(self, row: int) -> torch.Tensor | None:
        """File `row` as uint8 (3, S, S), or None when it cannot be read."""
        array = decode_image(self.paths[row], self.image_size)
        return None if array is None else torch.from_numpy(numpy.ascontiguousarray(array.transpose(2, 0, 1)))

    def fingerprint(self) -> bytes:
        """Paths, sizes and modification times: decoding a whole large tree to hash it would cost an epoch."""
        digest = hashlib.sha256(str(self.image_size).encode())
        for path in self.paths:
            stat = path.stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.digest()

    def statistics_sample(self, seed: int) -> torch.Tensor:
        """Up to STATISTICS_SAMPLE readable images drawn with `seed`, decoded: enough for 3-digit channel statistics."""
        order = torch.randperm(len(self.paths), generator=torch.Generator().manual_seed(seed))[:STATISTICS_SAMPLE]
        images, _ = decode_images([self.paths[row] for row in order.tolist()], self.image_size, skip_bad_files=True)
        return images


def default_workers() -> int:
    """DataLoader workers for streamed images: one per core the process may use, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))

"""What every dataset builder returns, and the generic train/val/test split applied after it.

Datasets that fit in memory are held as uint8 tensors (N, C, H, W): 4x smaller than float32 and
normalised per batch on the device (see batches.py). Builders only load the official train/test
data; carving validation, trimming and statistics happen here, the same way for every dataset.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from kdrun.data.image_files import ImageFiles
from kdrun.errors import ConfigError


@dataclass
class LoadedDataset:
    """A dataset as a builder loads it: official train and test parts, uint8 (N, C, H, W)."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: list[str]


@dataclass
class Split:
    """One part of the data: uint8 images (N, C, H, W), int64 labels (N,).

    `images` is ImageFiles instead of a tensor when a class-folder tree is streamed from disk.
    """

    images: torch.Tensor | ImageFiles
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DataSplits:
    """Train / val / test plus what models and normalisation need to know about the data."""

    name: str
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    mean: list[float]   # per channel, on the [0, 1] scale, from the training split
    std: list[float]
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)
    _test_fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.train.images.shape[1:]
        return int(channels), int(height), int(width)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        """Content hash of train + val (what a teacher learns from and is selected on).

        Computed once: the teacher's and the independent student's cache keys both need it, and for a
        streamed tree it stats every file.
        """
        if self._fingerprint is None:
            self._fingerprint = content_hash(self.train, self.val)
        return self._fingerprint

    def test_fingerprint(self) -> str:
        """Content hash of the test split: a cached model's recorded test accuracy holds only for it."""
        if self._test_fingerprint is None:
            self._test_fingerprint = content_hash(self.test)
        return self._test_fingerprint


def content_hash(*parts: Split) -> str:
    """sha256 over the images (for files: paths, sizes, mtimes) and labels of `parts`, in order."""
    digest = hashlib.sha256()
    for part in parts:
        images = part.images
        digest.update(images.fingerprint() if isinstance(images, ImageFiles) else images.contiguous().numpy().tobytes())
        digest.update(part.labels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def stratified_partition(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held_out) with `fraction` of every class held out, deterministic in `seed`.

    Per-class rounding keeps class proportions in both parts, so a small validation split is not
    missing a class by chance.
    """
    generator = torch.Generator().manual_seed(seed)
    kept, held_out = [], []
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        count = int(round(fraction * len(members)))
        held_out.append(members[:count])
        kept.append(members[count:])
    return torch.sort(torch.cat(kept)).values, torch.sort(torch.cat(held_out)).values


def make_splits(loaded: LoadedDataset, val_fraction: float, max_train_samples: int | None, seed: int) -> DataSplits:
    """Carve a stratified validation split from train, optionally trim train, and compute statistics.

    Raises:
        ConfigError: for fractions outside [0, 1) or a trim that leaves nothing.
    """
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"dataset.val_fraction={val_fraction} is outside [0, 1)", "try dataset.val_fraction=0.1")
    if len(loaded.train_labels) == 0 or len(loaded.test_labels) == 0:
        raise ConfigError(f"dataset '{loaded.name}' has no images in its train or test part", "check dataset.root")
    kept, held_out = stratified_partition(loaded.train_labels, val_fraction, seed)
    if max_train_samples is not None:
        if max_train_samples < 1:
            raise ConfigError(f"dataset.max_train_samples={max_train_samples} must be >= 1", "or null for all")
        order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(seed + 1))
        kept = torch.sort(kept[order[:max_train_samples]]).values
    train = Split(loaded.train_images[kept], loaded.train_labels[kept])
    val = Split(loaded.train_images[held_out], loaded.train_labels[held_out])
    test = Split(loaded.test_images, loaded.test_labels)
    sample = train.images.statistics_sample(seed) if isinstance(train.images, ImageFiles) else train.images
    mean, std = channel_statistics(sample)
    return DataSplits(loaded.name, train, val, test, loaded.class_names, mean, std)


def channel_statistics(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the [0, 1] scale, exact, from each channel's 256-bin histogram.

    uint8 pixels take only 256 values, so counting them (a fast integer pass, no float copy of the
    data) gives the same statistics as summing every pixel in float64, about 30x faster: the float
    pass was 0.28 s of every real-MNIST run, longer than decoding the files.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"channel statistics expect uint8 images, got {images.dtype}")  # a loader bug, not user input
    levels = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).to(torch.float64)
        weights = counts / counts.sum()
        mean = (weights * levels).sum()
        means.append(mean.item())
        stds.append((weights * (levels - mean) ** 2).sum().clamp_min(1e-12).sqrt().item())
    return means, stds


def override_normalisation(splits: DataSplits, mean: list[float] | None, std: list[float] | None) -> DataSplits:
    """Use fixed per-channel statistics (e.g. ImageNet's for pretrained models) instead of the data's own.

    Raises:
        ConfigError: when only one is given, the channel count differs, or a std is not positive.
    """
    if mean is None and std is None:
        return splits
    channels = splits.input_shape[0]
    if mean is None or std is None or len(mean) != channels or len(std) != channels:
        raise ConfigError(
            f"dataset.mean and dataset.std need {channels} values each for this data (got {mean} and {std})",
            "set both, one value per channel, or both null for the training split's own statistics",
        )
    if min(std) <= 0:
        raise ConfigError(f"dataset.std={std} must be positive", "e.g. dataset.std=[0.229,0.224,0.225]")
    splits.mean, splits.std = [float(value) for value in mean], [float(value) for value in std]
    return splits

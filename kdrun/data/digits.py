"""scikit-learn's bundled 8x8 digits: the offline default, real data with no download."""

from __future__ import annotations

import torch

from kdrun.data.base import LoadedDataset, stratified_partition
from kdrun.data.registry import DATASETS


@DATASETS.register("digits")
def load_digits(seed: int, test_fraction: float = 0.2) -> LoadedDataset:
    """1,797 images, 16 grey levels scaled to uint8; a stratified test split drawn from `seed`."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    # 0..16 -> 0..255, so the uint8 pipeline treats it like any other image data.
    images = torch.from_numpy(bunch.images).mul(255 / 16).round().clamp(0, 255).to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).to(torch.int64)
    train_index, test_index = stratified_partition(labels, test_fraction, seed)
    return LoadedDataset(
        name="digits",
        train_images=images[train_index],
        train_labels=labels[train_index],
        test_images=images[test_index],
        test_labels=labels[test_index],
        class_names=[str(digit) for digit in range(10)],
    )

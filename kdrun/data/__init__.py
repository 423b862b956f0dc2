"""Datasets (registered by name) and in-memory batching.

Each family module is imported here by name so that its @DATASETS.register runs.
"""

from kdrun.data import cifar, digits, fashion_mnist, imagefolder, mnist  # noqa: F401  (registration side effect)
from kdrun.data.base import DataSplits, LoadedDataset, Split, make_splits
from kdrun.data.registry import DATASETS

__all__ = ["DATASETS", "DataSplits", "LoadedDataset", "Split", "make_splits"]

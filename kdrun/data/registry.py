"""The dataset registry: `dataset=<name>` in config picks a builder returning a LoadedDataset."""

from kdrun.data.base import LoadedDataset
from kdrun.registry import Registry

DATASETS: Registry = Registry("dataset")

__all__ = ["DATASETS", "LoadedDataset"]

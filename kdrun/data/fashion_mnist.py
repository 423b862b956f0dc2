"""Fashion-MNIST: MNIST's file format and layout, ten clothing classes.

The default root is where Debian's `dataset-fashion-mnist` package puts the four IDX .gz files,
so `apt-get install dataset-fashion-mnist` is enough offline; elsewhere torchvision downloads them.
"""

from __future__ import annotations

from kdrun.data.base import LoadedDataset
from kdrun.data.mnist import load_idx_dataset
from kdrun.data.registry import DATASETS

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(seed: int, root: str = DEBIAN_ROOT, download: bool = True) -> LoadedDataset:
    """The official 60,000 train / 10,000 test parts; `seed` is unused (official test split)."""
    del seed
    return load_idx_dataset("fashion_mnist", "FashionMNIST", root, download, list(CLASS_NAMES))

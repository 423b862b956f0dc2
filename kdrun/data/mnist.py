"""MNIST and Fashion-MNIST from local IDX files, downloaded through torchvision when missing.

Both share one loader (`load_idx_dataset`): same file names, same layouts, only the torchvision
class used for downloading and the class names differ.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kdrun.data.base import LoadedDataset
from kdrun.data.idx import IDX_FILES, find_idx_files, load_idx_set
from kdrun.data.registry import DATASETS
from kdrun.download import downloading
from kdrun.errors import ConfigError

log = logging.getLogger(__name__)


@DATASETS.register("mnist")
def load_mnist(seed: int, root: str = "data/mnist", download: bool = True) -> LoadedDataset:
    """The official MNIST train/test parts; `seed` is unused (MNIST has an official test split)."""
    del seed
    return load_idx_dataset("mnist", "MNIST", root, download, [str(digit) for digit in range(10)])


def load_idx_dataset(name: str, torchvision_class: str, root: str, download: bool, class_names: list[str]) -> LoadedDataset:
    """Any MNIST-format dataset: the four IDX files under `root`, else torchvision's download."""
    folder = Path(root).expanduser().resolve()
    files = find_idx_files(folder) or _download(folder, download, torchvision_class)
    train_images, train_labels, test_images, test_labels = load_idx_set(files)
    log.info("%s: %d train + %d test images from %s", name, len(train_labels), len(test_labels), files["train_images"].parent)
    return LoadedDataset(name, train_images, train_labels, test_images, test_labels, class_names)


def _download(folder: Path, download: bool, torchvision_class: str) -> dict:
    """Fetch with torchvision into folder/<Class>/raw; any failure becomes a one-line ConfigError."""
    where = f"put {', '.join(name + '.gz' for name in IDX_FILES.values())} in {folder}"
    if not download:
        raise ConfigError(f"{torchvision_class} files not found under {folder}", f"{where}, or set dataset.download=true when online")
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, torchvision_class)
    log.info("%s not found under %s; downloading with torchvision", torchvision_class, folder)
    with downloading(f"{torchvision_class} not found under {folder} and the download failed", where):
        dataset_class(str(folder), train=True, download=True)
        dataset_class(str(folder), train=False, download=True)
    files = find_idx_files(folder)
    if files is None:
        raise ConfigError(f"{torchvision_class} download into {folder} left incomplete files", where)
    return files

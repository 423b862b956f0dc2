"""MNIST from local IDX files, downloaded through torchvision when they are missing."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from kdrun.data.base import LoadedDataset
from kdrun.data.idx import IDX_FILES, find_idx_files, load_idx_set
from kdrun.data.registry import DATASETS
from kdrun.errors import ConfigError

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_SECONDS = 20


@DATASETS.register("mnist")
def load_mnist(seed: int, root: str = "data/mnist", download: bool = True) -> LoadedDataset:
    """The official MNIST train/test parts; `seed` is unused (MNIST has an official test split)."""
    del seed
    folder = Path(root).expanduser().resolve()
    files = find_idx_files(folder) or _download(folder, download)
    train_images, train_labels, test_images, test_labels = load_idx_set(files)
    log.info("MNIST: %d train + %d test images from %s", len(train_labels), len(test_labels), files["train_images"].parent)
    return LoadedDataset("mnist", train_images, train_labels, test_images, test_labels, [str(d) for d in range(10)])


def _download(folder: Path, download: bool) -> dict:
    """Fetch MNIST with torchvision into folder/MNIST/raw; any failure becomes a one-line ConfigError."""
    where = f"put {', '.join(name + '.gz' for name in IDX_FILES.values())} in {folder}"
    if not download:
        raise ConfigError(f"MNIST files not found under {folder}", f"{where}, or set dataset.download=true when online")
    from torchvision.datasets import MNIST

    log.info("MNIST not found under %s; downloading with torchvision", folder)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)  # torchvision's urlopen has no timeout of its own
    try:
        MNIST(str(folder), train=True, download=True)
        MNIST(str(folder), train=False, download=True)
    except (OSError, RuntimeError, ValueError) as error:
        reason = " ".join(str(error).split())[:160]
        raise ConfigError(f"MNIST not found under {folder} and the download failed ({reason})", where) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
    files = find_idx_files(folder)
    if files is None:
        raise ConfigError(f"MNIST download into {folder} left incomplete files", where)
    return files

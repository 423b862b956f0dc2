"""CIFAR-10 and CIFAR-100: torchvision's python-pickle batches, or a class-folder tree of images.

Looked for under `root`, in this order: the pickles (root/cifar-10-batches-py or root itself),
a class-folder tree (root/train/<class>, root/test/<class>, e.g. PNG copies), else torchvision
downloads the pickles when `download=true`. Pickles are read with an unpickler that only accepts
numpy arrays, so a tampered batch file cannot run code.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdrun.data.base import LoadedDataset
from kdrun.data.imagefolder import load_class_folders
from kdrun.data.images import check_image_size, resize_uint8
from kdrun.data.registry import DATASETS
from kdrun.download import downloading
from kdrun.errors import ConfigError

log = logging.getLogger(__name__)

ALLOWED_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                   ("numpy._core.multiarray", "scalar"),
                   ("_codecs", "encode")}  # protocol-2 pickles written by Python 3 rebuild bytes with it; harmless


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its files and labels (torchvision's names)."""

    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    torchvision_class: str


CIFAR10 = CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{k}" for k in range(1, 6)), "test_batch",
                      "batches.meta", "labels", "label_names", "CIFAR10")
CIFAR100 = CifarLayout("cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names", "CIFAR100")


class NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def read_batch(path: Path) -> dict[str, Any]:
    """One pickled batch as a dict with str keys (Python 2 files give str, Python 3 files bytes)."""
    try:
        with open(path, "rb") as handle:
            content = NumpyOnlyUnpickler(handle, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as error:
        raise ConfigError(f"cannot read CIFAR batch {path} ({error})", "replace it with an intact copy") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path} is not a CIFAR batch (no dict inside)", "replace it with an intact copy")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in content.items()}


def text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def read_part(folder: Path, files: tuple[str, ...], layout: CifarLayout) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in files:
        batch = read_batch(folder / name)
        if "data" not in batch or layout.label_key not in batch:
            raise ConfigError(f"{folder / name} has no 'data'/'{layout.label_key}' entries", "replace it with an intact copy")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch[layout.label_key]):
            raise ConfigError(f"{folder / name} holds data of shape {data.shape}, not (N, 3072)", "replace it with an intact copy")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.tensor(list(batch[layout.label_key]), dtype=torch.int64))
    return torch.cat(images), torch.cat(labels)


def find_pickles(root: Path, layout: CifarLayout) -> Path | None:
    for folder in (root / layout.folder, root):
        if all((folder / name).is_file() for name in (*layout.train_files, layout.test_file, layout.meta_file)):
            return folder
    return None


def download(root: Path, layout: CifarLayout) -> Path:
    """torchvision's download into root; failures are one-line ConfigErrors."""
    import torchvision.datasets

    where = f"put the {layout.folder} folder (python version) or train/<class> + test/<class> image folders in {root}"
    log.info("%s not found under %s; downloading with torchvision", layout.torchvision_class, root)
    with downloading(f"{layout.torchvision_class} not found under {root} and the download failed", where):
        getattr(torchvision.datasets, layout.torchvision_class)(str(root), train=True, download=True)
    return root / layout.folder


def load_cifar(name: str, layout: CifarLayout, root: str, download_missing: bool, image_size: int | None, seed: int) -> LoadedDataset:
    check_image_size(image_size)
    folder = Path(root).expanduser().resolve()
    pickles = find_pickles(folder, layout)
    if pickles is None and (folder / "train").is_dir():
        return load_class_folders(name, str(folder), seed, image_size or 32, 0.2, skip_bad_files=False)
    if pickles is None and not download_missing:
        raise ConfigError(f"{layout.torchvision_class} not found under {folder}",
                          f"put {layout.folder} or train/<class> + test/<class> folders there, or set dataset.download=true when online")
    pickles = pickles or download(folder, layout)
    train_images, train_labels = read_part(pickles, layout.train_files, layout)
    test_images, test_labels = read_part(pickles, (layout.test_file,), layout)
    meta = read_batch(pickles / layout.meta_file)
    class_names = [text(label) for label in meta.get(layout.names_key, [])]
    if len(class_names) <= int(max(train_labels.max(), test_labels.max())):
        raise ConfigError(f"{pickles / layout.meta_file} names {len(class_names)} classes, fewer than the labels use",
                          "replace it with an intact copy")
    log.info("%s: %d train + %d test images from %s", name, len(train_labels), len(test_labels), pickles)
    return LoadedDataset(name, resize_uint8(train_images, image_size), train_labels,
                         resize_uint8(test_images, image_size), test_labels, class_names)


@DATASETS.register("cifar10")
def load_cifar10(seed: int, root: str = "data/cifar10", download: bool = True, image_size: int | None = None) -> LoadedDataset:
    """CIFAR-10's official 50,000 / 10,000 split; image_size=None keeps 32x32."""
    return load_cifar("cifar10", CIFAR10, root, download, image_size, seed)


@DATASETS.register("cifar100")
def load_cifar100(seed: int, root: str = "data/cifar100", download: bool = True, image_size: int | None = None) -> LoadedDataset:
    """CIFAR-100 with its 100 fine labels; image_size=None keeps 32x32."""
    return load_cifar("cifar100", CIFAR100, root, download, image_size, seed)

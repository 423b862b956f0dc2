"""Class-folder image trees: `imagefolder` for any user folder, `flowers` as R1's preset of it.

Layouts accepted under `root`:
  root/train/<class>/*, root/test/<class>/*   official split, used as is
  root/train/<class>/* only, or root/<class>/*  test split drawn per class from `seed`
Class names are the sorted folder names (as torchvision's ImageFolder). Hidden files are ignored;
any other file must decode as an image.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from kdrun.data.base import LoadedDataset, stratified_partition
from kdrun.data.image_files import ImageFiles, default_workers
from kdrun.data.images import check_image_size, decode_images
from kdrun.data.registry import DATASETS
from kdrun.errors import ConfigError

log = logging.getLogger(__name__)


def class_files(folder: Path) -> dict[str, list[Path]]:
    """{class name: sorted files} for the class sub-folders of `folder`.

    Raises:
        ConfigError: when there are no class folders or one of them is empty.
    """
    classes = sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))
    if not classes:
        raise ConfigError(f"{folder} has no class sub-folders", "lay images out as <root>/<class>/<image>")
    files = {}
    for class_folder in classes:
        members = sorted(path for path in class_folder.rglob("*") if path.is_file() and not path.name.startswith("."))
        if not members:
            raise ConfigError(f"class folder {class_folder} is empty", "add images to it or remove the folder")
        files[class_folder.name] = members
    return files


def tree_files(folder: Path, class_names: list[str]) -> tuple[list[Path], torch.Tensor]:
    """The files of one class-folder tree and their labels (indices into `class_names`), not decoded."""
    files = class_files(folder)
    unknown = sorted(set(files) - set(class_names))
    if unknown:
        raise ConfigError(f"{folder / unknown[0]} is a class the training split does not have", "use the same class folders in train/ and test/")
    paths = [path for name in files for path in files[name]]
    labels = torch.tensor([class_names.index(name) for name in files for _ in files[name]], dtype=torch.int64)
    return paths, labels


def decode_tree(
    folder: Path, paths: list[Path], labels: torch.Tensor, class_names: list[str], image_size: int, skip_bad_files: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a tree's files into memory; every class must keep at least one readable image."""
    images, kept = decode_images(paths, image_size, skip_bad_files)
    kept_labels = labels[kept]
    for label in labels.unique().tolist():
        if not (kept_labels == label).any():
            raise ConfigError(f"class folder {folder / class_names[label]} has no readable images",
                              "add images to it or remove the folder")
    return images, kept_labels


def load_class_folders(
    name: str, root: str, seed: int, image_size: int, test_fraction: float, skip_bad_files: bool,
    in_memory: str | bool = "auto", workers: str | int = "auto",
) -> LoadedDataset:
    """A LoadedDataset from a class-folder tree in any of the layouts in the module docstring.

    The images are decoded into memory once, unless that would take more than half the available
    memory (`in_memory=auto`) or `in_memory=false`: then they stay files, decoded by DataLoader workers.
    """
    check_image_size(image_size)
    folder = Path(root).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"dataset.root {folder} is not a folder", "set dataset.root=/path/to/images")
    train_folder = folder / "train" if (folder / "train").is_dir() else folder
    class_names = sorted(class_files(train_folder))
    if len(class_names) < 2:  # one class would "train" to 100% accuracy and measure nothing
        raise ConfigError(f"{train_folder} has only one class folder ('{class_names[0]}'); a classifier needs at least two",
                          "add one sub-folder of images per class")
    trees = [(train_folder, *tree_files(train_folder, class_names))]
    if (folder / "test").is_dir() and train_folder != folder:
        trees.append((folder / "test", *tree_files(folder / "test", class_names)))
    decoded_bytes = sum(len(paths) for _, paths, _ in trees) * 3 * image_size * image_size
    if keep_in_memory(in_memory, decoded_bytes, name):
        parts = [decode_tree(tree, paths, labels, class_names, image_size, skip_bad_files) for tree, paths, labels in trees]
    else:
        loader_workers = worker_count(workers)
        parts = [(ImageFiles(paths, image_size, loader_workers, skip_bad_files), labels) for _, paths, labels in trees]
    (train_images, train_labels), test_part = parts[0], parts[1] if len(parts) > 1 else None
    if test_part is not None:
        test_images, test_labels = test_part
    else:
        if not 0 < test_fraction < 1:
            raise ConfigError(f"dataset.test_fraction={test_fraction} is outside (0, 1)", "try dataset.test_fraction=0.2")
        kept, held_out = stratified_partition(train_labels, test_fraction, seed)
        test_images, test_labels = train_images[held_out], train_labels[held_out]
        train_images, train_labels = train_images[kept], train_labels[kept]
    log.info("%s: %d train + %d test images, %d classes, from %s", name, len(train_labels), len(test_labels), len(class_names), folder)
    return LoadedDataset(name, train_images, train_labels, test_images, test_labels, class_names)


def keep_in_memory(setting: str | bool, decoded_bytes: int, name: str) -> bool:
    """dataset.in_memory: true, false, or auto (decode into memory when it takes at most half the available memory).

    Raises:
        ConfigError: for any other value.
    """
    if setting not in ("auto", True, False):
        raise ConfigError(f"dataset.in_memory={setting} is not known", "use auto, true or false")
    if setting != "auto":
        return bool(setting)
    available = available_memory_bytes()
    if available is None or decoded_bytes <= available // 2:
        return True
    log.info("%s: decoded images would take %.1f GB, more than half the %.1f GB available: streaming them from disk "
             "(dataset.in_memory=true keeps them in memory)", name, decoded_bytes / 1e9, available / 1e9)
    return False


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages; None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def worker_count(workers: str | int) -> int:
    """dataset.workers: auto (one per usable core, at most 8) or a count >= 0 (0 decodes in the training process)."""
    if workers == "auto":
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"dataset.workers={workers} must be auto or a whole number >= 0", "e.g. dataset.workers=4")
    return workers


@DATASETS.register("imagefolder")
def load_imagefolder(
    seed: int, root: str, image_size: int = 224, test_fraction: float = 0.2, skip_bad_files: bool = False,
    in_memory: str | bool = "auto", workers: str | int = "auto",
) -> LoadedDataset:
    """Any class-folder tree; images resized to image_size squared, RGB."""
    return load_class_folders("imagefolder", root, seed, image_size, test_fraction, skip_bad_files, in_memory, workers)


@DATASETS.register("flowers")
def load_flowers(
    seed: int, root: str = "data/flowers", image_size: int = 224, test_fraction: float = 0.2, skip_bad_files: bool = False,
    in_memory: str | bool = "auto", workers: str | int = "auto",
) -> LoadedDataset:
    """R1's flower photos (root/train/<class>, root/test/<class>)."""
    return load_class_folders("flowers", root, seed, image_size, test_fraction, skip_bad_files, in_memory, workers)

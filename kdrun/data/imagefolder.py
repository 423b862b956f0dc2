"""Class-folder image trees: `imagefolder` for any user folder, `flowers` as R1's preset of it.

Layouts accepted under `root`:
  root/train/<class>/*, root/test/<class>/*   official split, used as is
  root/train/<class>/* only, or root/<class>/*  test split drawn per class from `seed`
Class names are the sorted folder names (as torchvision's ImageFolder). Hidden files are ignored;
any other file must decode as an image.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from kdrun.data.base import LoadedDataset, stratified_partition
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


def load_tree(folder: Path, class_names: list[str], image_size: int, skip_bad_files: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one class-folder tree; labels index `class_names` (folders not in it are an error)."""
    files = class_files(folder)
    unknown = sorted(set(files) - set(class_names))
    if unknown:
        raise ConfigError(f"{folder / unknown[0]} is a class the training split does not have", "use the same class folders in train/ and test/")
    paths = [path for name in files for path in files[name]]
    labels = [class_names.index(name) for name in files for _ in files[name]]
    images, kept = decode_images(paths, image_size, skip_bad_files)
    kept_labels = torch.tensor([labels[index] for index in kept], dtype=torch.int64)
    for name in files:
        if not (kept_labels == class_names.index(name)).any():
            raise ConfigError(f"class folder {folder / name} has no readable images", "add images to it or remove the folder")
    return images, kept_labels


def load_class_folders(
    name: str, root: str, seed: int, image_size: int, test_fraction: float, skip_bad_files: bool
) -> LoadedDataset:
    """A LoadedDataset from a class-folder tree in any of the layouts in the module docstring."""
    check_image_size(image_size)
    folder = Path(root).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"dataset.root {folder} is not a folder", "set dataset.root=/path/to/images")
    train_folder = folder / "train" if (folder / "train").is_dir() else folder
    class_names = sorted(class_files(train_folder))
    train_images, train_labels = load_tree(train_folder, class_names, image_size, skip_bad_files)
    if (folder / "test").is_dir() and train_folder != folder:
        test_images, test_labels = load_tree(folder / "test", class_names, image_size, skip_bad_files)
    else:
        if not 0 < test_fraction < 1:
            raise ConfigError(f"dataset.test_fraction={test_fraction} is outside (0, 1)", "try dataset.test_fraction=0.2")
        kept, held_out = stratified_partition(train_labels, test_fraction, seed)
        test_images, test_labels = train_images[held_out], train_labels[held_out]
        train_images, train_labels = train_images[kept], train_labels[kept]
    log.info("%s: %d train + %d test images, %d classes, from %s", name, len(train_labels), len(test_labels), len(class_names), folder)
    return LoadedDataset(name, train_images, train_labels, test_images, test_labels, class_names)


@DATASETS.register("imagefolder")
def load_imagefolder(
    seed: int, root: str, image_size: int = 224, test_fraction: float = 0.2, skip_bad_files: bool = False
) -> LoadedDataset:
    """Any class-folder tree; images resized to image_size squared, RGB."""
    return load_class_folders("imagefolder", root, seed, image_size, test_fraction, skip_bad_files)


@DATASETS.register("flowers")
def load_flowers(
    seed: int, root: str = "data/flowers", image_size: int = 224, test_fraction: float = 0.2, skip_bad_files: bool = False
) -> LoadedDataset:
    """R1's flower photos (root/train/<class>, root/test/<class>)."""
    return load_class_folders("flowers", root, seed, image_size, test_fraction, skip_bad_files)

"""Reading MNIST-style IDX files (gzipped or not) and finding them under a user's folder.

We read IDX ourselves instead of going through torchvision's MNIST class because users keep these
files in many layouts (flat folder, torchvision's MNIST/raw, Debian's .gz folder, train and test in
sibling folders), and torchvision only accepts its own unpacked raw/ layout.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from kdrun.errors import ConfigError

IMAGE_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (count, rows, columns)
LABEL_MAGIC = 0x00000801  # unsigned bytes, 1 dimension

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path, expected_magic: int) -> torch.Tensor:
    """An IDX file's array as a uint8 tensor; images (N, 1, H, W), labels (N,) int64.

    Raises:
        ConfigError: when the file is not a valid IDX file of the expected kind.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise ConfigError(f"cannot read {path}: {error}", "replace it with an intact copy") from None
    dimensions = 3 if expected_magic == IMAGE_MAGIC else 1
    header_size = 4 + 4 * dimensions
    if len(data) < header_size or int.from_bytes(data[:4], "big") != expected_magic:
        raise ConfigError(f"{path} is not an IDX {'image' if dimensions == 3 else 'label'} file", "check the file")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dimensions)]
    count = int(np.prod(shape))
    if len(data) - header_size < count:
        raise ConfigError(f"{path} is truncated ({len(data) - header_size} of {count} bytes)", "replace it with an intact copy")
    array = np.frombuffer(data, dtype=np.uint8, count=count, offset=header_size).reshape(shape)
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(1) if dimensions == 3 else tensor.to(torch.int64)


def candidate_folders(root: Path) -> list[Path]:
    """Where IDX files may sit under `root`: itself, torchvision's layouts, and direct sub-folders."""
    folders = [root, root / "raw", root / "MNIST" / "raw", root / "FashionMNIST" / "raw"]
    if root.is_dir():
        folders += sorted(path for path in root.iterdir() if path.is_dir())
    return folders


def find_idx_files(root: Path) -> dict[str, Path] | None:
    """The four IDX files under `root` (.gz or unpacked), or None when any is missing."""
    found: dict[str, Path] = {}
    for key, stem in IDX_FILES.items():
        for folder in candidate_folders(root):
            matches = [folder / name for name in (stem, stem + ".gz") if (folder / name).is_file()]
            if matches:
                found[key] = matches[0]
                break
    return found if len(found) == len(IDX_FILES) else None


def load_idx_set(files: dict[str, Path]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_images, train_labels, test_images, test_labels) from the four IDX files."""
    parts = {
        key: read_idx(path, IMAGE_MAGIC if key.endswith("images") else LABEL_MAGIC) for key, path in files.items()
    }
    for part in ("train", "test"):
        if len(parts[f"{part}_images"]) != len(parts[f"{part}_labels"]):
            raise ConfigError(
                f"{files[part + '_images']} and {files[part + '_labels']} hold different numbers of items",
                "use matching image and label files",
            )
    return parts["train_images"], parts["train_labels"], parts["test_images"], parts["test_labels"]

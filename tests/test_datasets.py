"""New datasets load from tiny data written in tmp in each real on-disk format."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_kdrun, write_cifar_batch, write_idx, write_tree
from kdrun.data import DATASETS
from kdrun.data.augment import build_augmentation
from kdrun.errors import ConfigError


@pytest.fixture
def tiny_cifar10(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for index, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = np.full((4, 3072), index * 10, dtype=np.uint8)
        data[:, :1024] = 200  # red plane first: channel order must come out as (3, 32, 32) = CHW
        write_cifar_batch(folder / name, data, [index % 10, 1, 2, 3])
    with open(folder / "batches.meta", "wb") as stream:
        pickle.dump({b"label_names": [name.encode() for name in "abcdefghij"], b"num_vis": 3072}, stream, protocol=2)
    return tmp_path / "cifar"


def test_cifar10_pickles_load_with_shapes_labels_and_names(tiny_cifar10: Path):
    loaded = DATASETS.build("cifar10", 0, root=str(tiny_cifar10), download=False)
    assert loaded.train_images.shape == (20, 3, 32, 32) and loaded.test_images.shape == (4, 3, 32, 32)
    assert loaded.train_labels[:4].tolist() == [0, 1, 2, 3] and loaded.test_labels.tolist() == [5, 1, 2, 3]
    assert loaded.class_names == list("abcdefghij")
    assert loaded.train_images[0, 0].eq(200).all() and loaded.train_images[0, 1].eq(0).all()
    resized = DATASETS.build("cifar10", 0, root=str(tiny_cifar10), download=False, image_size=16)
    assert resized.train_images.shape == (20, 3, 16, 16) and resized.train_images.dtype == torch.uint8


def test_cifar100_uses_fine_labels(tmp_path: Path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, labels in (("train", [0, 99, 5]), ("test", [7, 99])):
        write_cifar_batch(folder / name, np.zeros((len(labels), 3072), np.uint8), labels, "fine_labels")
    with open(folder / "meta", "wb") as stream:
        pickle.dump({b"fine_label_names": [f"c{k}".encode() for k in range(100)]}, stream, protocol=2)
    loaded = DATASETS.build("cifar100", 0, root=str(tmp_path), download=False)
    assert loaded.train_labels.tolist() == [0, 99, 5] and len(loaded.class_names) == 100


def test_cifar_pickle_with_code_is_refused(tiny_cifar10: Path):
    import os

    path = tiny_cifar10 / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({"data": os.system}))
    with pytest.raises(ConfigError, match="not allowed"):
        DATASETS.build("cifar10", 0, root=str(tiny_cifar10), download=False)


def test_cifar_from_class_folders_and_imagefolder_split(tmp_path: Path):
    write_tree(tmp_path / "png" / "train", {"cat": 4, "dog": 3})
    write_tree(tmp_path / "png" / "test", {"cat": 1, "dog": 2})
    loaded = DATASETS.build("cifar10", 0, root=str(tmp_path / "png"), download=False)
    assert loaded.train_images.shape == (7, 3, 32, 32) and loaded.class_names == ["cat", "dog"]
    assert loaded.test_labels.tolist() == [0, 1, 1]
    write_tree(tmp_path / "flat", {"a": 10, "b": 10})
    first = DATASETS.build("imagefolder", 3, root=str(tmp_path / "flat"), image_size=8, test_fraction=0.2)
    again = DATASETS.build("imagefolder", 3, root=str(tmp_path / "flat"), image_size=8, test_fraction=0.2)
    assert first.train_images.shape == (16, 3, 8, 8) and first.test_labels.tolist() == [0, 0, 1, 1]
    assert torch.equal(first.train_labels, again.train_labels)
    colour = first.train_images[first.train_labels == 1][0, :, 4, 4].tolist()
    assert abs(colour[0] - 40) <= 3 and abs(colour[1] - 215) <= 3  # class 'b' colour survives decoding


def test_fashion_mnist_reads_a_debian_style_gz_folder(tmp_path: Path):
    for prefix, count in (("train", 30), ("t10k", 10)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", np.full((count, 28, 28), 7))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    loaded = DATASETS.build("fashion_mnist", 0, root=str(tmp_path), download=False)
    assert loaded.train_images.shape == (30, 1, 28, 28) and loaded.test_labels[:3].tolist() == [0, 1, 2]
    assert loaded.class_names[9] == "ankle boot"


def test_corrupt_image_errors_or_is_skipped(tmp_path: Path):
    write_tree(tmp_path / "train", {"a": 3, "b": 3})
    write_tree(tmp_path / "test", {"a": 1, "b": 1})
    (tmp_path / "train" / "a" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match="broken.jpg"):
        DATASETS.build("imagefolder", 0, root=str(tmp_path), image_size=8)
    loaded = DATASETS.build("imagefolder", 0, root=str(tmp_path), image_size=8, skip_bad_files=True)
    assert len(loaded.train_labels) == 6


def test_crop_flip_is_seeded_and_keeps_shape():
    augment = build_augmentation("crop_flip")
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8).to(torch.uint8)
    first = augment(images, torch.Generator().manual_seed(0))
    assert first.shape == images.shape and first.dtype == torch.uint8
    assert torch.equal(first, augment(images, torch.Generator().manual_seed(0)))
    # every output row is a (possibly flipped) shifted window of the padded input, so values come from the image or 0
    assert set(first.unique().tolist()) <= set(images.unique().tolist()) | {0}


@pytest.mark.parametrize(
    "layout, expected",
    [("missing", "is not a folder"), ("empty_class", "is empty"), ("corrupt", "cannot read image file"),
     ("single_class", "has only one class folder ('a'); a classifier needs at least two (add one sub-folder")],
)
def test_bad_image_folders_are_one_line_cli_errors(tmp_path: Path, layout: str, expected: str):
    root = tmp_path / "images"
    if layout == "single_class":  # no train/ split: root/<class>/*, one class only
        write_tree(root, {"a": 4})
    elif layout != "missing":
        write_tree(root / "train", {"a": 2, "b": 2})
        write_tree(root / "test", {"a": 1, "b": 1})
        if layout == "empty_class":
            (root / "train" / "c").mkdir()
        else:
            (root / "test" / "b" / "bad.png").write_bytes(b"\x89PNG garbage")
    result = run_kdrun("train", "dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=8", cwd=tmp_path)
    assert result.returncode == 2 and expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    if layout == "single_class":
        assert f"kdrun: error: {root} has only one class folder" in result.stderr  # names the folder

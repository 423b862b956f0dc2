"""Datasets load from their real on-disk formats with the right shapes, labels and splits."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy
import pytest
import torch

from kdrun.data import DATASETS, make_splits
from kdrun.data.base import Split, channel_statistics, stratified_partition
from kdrun.data.batches import InMemoryBatches
from kdrun.data.idx import find_idx_files
from kdrun.errors import ConfigError

CPU = torch.device("cpu")


def test_mnist_reads_idx_gz(tiny_mnist: Path):
    loaded = DATASETS.build("mnist", 0, root=str(tiny_mnist), download=False)
    assert loaded.train_images.shape == (200, 1, 28, 28) and loaded.train_images.dtype == torch.uint8
    assert loaded.test_images.shape == (60, 1, 28, 28)
    assert loaded.train_labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_mnist_found_in_torchvision_layout_and_sibling_folders(tiny_mnist: Path, tmp_path: Path):
    raw = tmp_path / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for file in tiny_mnist.iterdir():  # torchvision keeps them unpacked
        (raw / file.name.removesuffix(".gz")).write_bytes(gzip.decompress(file.read_bytes()))
    assert find_idx_files(tmp_path / "tv")["train_images"].parent == raw
    split_root = tmp_path / "split"
    for part in ("train", "t10k"):
        (split_root / f"mnist-{part}").mkdir(parents=True)
        for file in tiny_mnist.glob(f"{part}-*"):
            (split_root / f"mnist-{part}" / file.name).write_bytes(file.read_bytes())
    assert DATASETS.build("mnist", 0, root=str(split_root), download=False).test_images.shape[0] == 60


def test_missing_mnist_offline_is_a_one_line_config_error(tmp_path: Path):
    with pytest.raises(ConfigError) as error:
        DATASETS.build("mnist", 0, root=str(tmp_path / "nothing"), download=False)
    assert "train-images-idx3-ubyte.gz" in error.value.one_line() and "\n" not in error.value.one_line()


def test_failed_download_is_a_one_line_config_error(tmp_path: Path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: <urlopen error no network>")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(ConfigError) as error:
        DATASETS.build("mnist", 0, root=str(tmp_path / "nothing"), download=True)
    assert "download failed" in error.value.message and str(tmp_path / "nothing") in error.value.hint


def test_truncated_idx_is_rejected(tiny_mnist: Path):
    path = tiny_mnist / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:1000]))
    with pytest.raises(ConfigError, match="truncated"):
        DATASETS.build("mnist", 0, root=str(tiny_mnist), download=False)


def test_digits_split_is_stratified_and_deterministic():
    first = make_splits(DATASETS.build("digits", 0), 0.1, None, seed=0)
    again = make_splits(DATASETS.build("digits", 0), 0.1, None, seed=0)
    other = make_splits(DATASETS.build("digits", 1), 0.1, None, seed=1)
    assert len(first.train) + len(first.val) + len(first.test) == 1797
    assert torch.equal(first.train.labels, again.train.labels) and torch.equal(first.val.images, again.val.images)
    assert not torch.equal(first.test.images, other.test.images)
    assert first.input_shape == (1, 8, 8) and first.num_classes == 10
    assert set(first.val.labels.tolist()) == set(range(10))  # every class present in validation
    assert first.fingerprint() == again.fingerprint() != other.fingerprint()


def test_digits_read_directly_equal_sklearns_load_digits(monkeypatch):
    from sklearn.datasets import load_digits

    from kdrun.data import digits

    pixels, labels = digits.read_bundled_digits()
    bunch = load_digits()
    assert pixels.shape == (1797, 8, 8) and numpy.array_equal(pixels, bunch.images) and numpy.array_equal(labels, bunch.target)
    monkeypatch.setattr(digits.importlib.util, "find_spec", lambda name: None)  # the file not found: sklearn's loader
    fallback_pixels, fallback_labels = digits.read_bundled_digits()
    assert numpy.array_equal(fallback_pixels, bunch.images) and numpy.array_equal(fallback_labels, bunch.target)


def test_max_train_samples_trims_only_train():
    full = make_splits(DATASETS.build("digits", 0), 0.1, None, seed=0)
    trimmed = make_splits(DATASETS.build("digits", 0), 0.1, 100, seed=0)
    assert len(trimmed.train) == 100 and len(trimmed.val) == len(full.val) and len(trimmed.test) == len(full.test)


def test_stratified_partition_keeps_class_shares():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    kept, held_out = stratified_partition(labels, 0.1, seed=3)
    assert torch.bincount(labels[held_out]).tolist() == [5, 3, 2]
    assert len(set(kept.tolist()) & set(held_out.tolist())) == 0 and len(kept) + len(held_out) == 100


def test_channel_statistics_equal_a_float64_pass_over_every_pixel():
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (50, 3, 9, 7), generator=generator, dtype=torch.uint8)
    images[:, 1] //= 4  # channels with different distributions
    mean, std = channel_statistics(images)
    pixels = images.transpose(0, 1).reshape(3, -1).to(torch.float64) / 255
    assert mean == pytest.approx(pixels.mean(dim=1).tolist(), abs=1e-12)
    assert std == pytest.approx(pixels.std(dim=1, unbiased=False).tolist(), abs=1e-12)
    assert channel_statistics(torch.full((4, 1, 2, 2), 255, dtype=torch.uint8)) == ([1.0], [1e-6])  # constant: no zero std


def test_batches_normalise_and_carry_sample_indices():
    splits = make_splits(DATASETS.build("digits", 0), 0.1, None, seed=0)
    batches = InMemoryBatches(splits.train, splits.mean, splits.std, 64, torch.device("cpu"), shuffle=True, seed=0)
    seen = torch.cat([batch.indices for batch in batches])
    assert sorted(seen.tolist()) == list(range(len(splits.train)))
    batch = next(iter(batches))
    expected = (splits.train.images[batch.indices].float() / 255 - splits.mean[0]) / splits.std[0]
    assert torch.allclose(batch.inputs, expected, atol=1e-5)
    assert torch.equal(batch.targets, splits.train.labels[batch.indices])
    everything = torch.cat([b.inputs for b in InMemoryBatches(splits.train, splits.mean, splits.std, 4096, torch.device("cpu"), False)])
    assert everything.mean().abs() < 1e-4 and (everything.std() - 1).abs() < 1e-3


def test_training_batches_skip_a_trailing_single_sample_but_evaluation_keeps_it():
    split = Split(torch.zeros(25, 1, 2, 2, dtype=torch.uint8), torch.arange(25) % 3)
    training = InMemoryBatches(split, [0.0], [1.0], 12, CPU, shuffle=True, seed=0)
    evaluation = InMemoryBatches(split, [0.0], [1.0], 12, CPU, shuffle=False)
    assert [len(batch.targets) for batch in training] == [12, 12] and len(training) == 2
    assert [len(batch.targets) for batch in evaluation] == [12, 12, 1] and evaluation.num_samples == 25
    seen = torch.cat([torch.cat([batch.indices for batch in training]) for _ in range(6)])
    assert set(seen.tolist()) == set(range(25))  # reshuffled: every sample is used over epochs

"""Class-folder trees too large for memory are streamed by DataLoader workers, batch for batch like the in-memory path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import TINY, read_metrics, read_summary, write_tree
from kdrun.data import imagefolder
from kdrun.data.base import Split
from kdrun.data.image_files import ImageFiles
from kdrun.data.streaming import StreamingBatches, batches_for_this_rank
from kdrun.errors import ConfigError
from kdrun.parallel import Topology

CPU = torch.device("cpu")
TIMING = ("seconds", "samples_per_s")


def noisy_tree(root: Path, counts: dict[str, int]) -> None:
    """PNG class folders whose pixels differ per image (solid colours would hide a wrong order)."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for class_index, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for item in range(count):
            pixels = torch.randint(0, 256, (10, 10, 3), generator=generator, dtype=torch.uint8)
            pixels[..., class_index] = 255
            Image.fromarray(pixels.numpy()).save(root / name / f"{item}.png")


def test_a_streamed_tree_trains_exactly_like_the_same_tree_in_memory(kdrun_in, tmp_path):
    noisy_tree(tmp_path / "tree" / "train", {"a": 12, "b": 12, "c": 12})
    noisy_tree(tmp_path / "tree" / "test", {"a": 3, "b": 3, "c": 3})
    common = [*TINY, "dataset=imagefolder", f"dataset.root={tmp_path / 'tree'}", "dataset.image_size=8",
              "dataset.augment=none", "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.3,0.3,0.3]", "batch_size=8"]
    in_memory, memory_dir = kdrun_in(*common, "dataset.in_memory=true", run_name="memory")
    streamed, stream_dir = kdrun_in(*common, "dataset.in_memory=false", "dataset.workers=1", "cache_dir=other", run_name="stream")
    assert in_memory.returncode == 0, in_memory.stderr
    assert streamed.returncode == 0, streamed.stderr
    assert "teacher logits computed" in streamed.stderr  # the logits pass ran over the streamed training split
    assert "Traceback" not in streamed.stderr and "Exception ignored" not in streamed.stderr  # workers stopped cleanly
    strip = lambda lines: [{key: value for key, value in line.items() if key not in TIMING} for line in lines]  # noqa: E731
    assert strip(read_metrics(stream_dir)) == strip(read_metrics(memory_dir))
    for phase in ("teacher", "independent", "distilled"):
        assert read_summary(stream_dir)["phases"][phase]["test_acc"] == read_summary(memory_dir)["phases"][phase]["test_acc"]


def test_auto_streams_only_when_the_decoded_images_would_take_over_half_the_available_memory(tmp_path, monkeypatch):
    write_tree(tmp_path / "train", {"a": 4, "b": 4})
    write_tree(tmp_path / "test", {"a": 2, "b": 2})
    decoded = 12 * 3 * 16 * 16
    monkeypatch.setattr(imagefolder, "available_memory_bytes", lambda: 2 * decoded)
    assert isinstance(imagefolder.load_imagefolder(0, str(tmp_path), image_size=16).train_images, torch.Tensor)
    monkeypatch.setattr(imagefolder, "available_memory_bytes", lambda: 2 * decoded - 1)
    loaded = imagefolder.load_imagefolder(0, str(tmp_path), image_size=16, workers=3)
    assert isinstance(loaded.train_images, ImageFiles) and loaded.train_images.workers == 3
    assert loaded.train_images.shape == (8, 3, 16, 16) and len(loaded.test_images) == 4
    with pytest.raises(ConfigError, match="in_memory=maybe"):
        imagefolder.load_imagefolder(0, str(tmp_path), image_size=16, in_memory="maybe")
    with pytest.raises(ConfigError, match="workers=-1"):
        imagefolder.load_imagefolder(0, str(tmp_path), image_size=16, in_memory=False, workers=-1)


def test_an_unreadable_file_met_while_streaming_is_named_or_left_out_with_skip_bad_files(tmp_path):
    write_tree(tmp_path / "a", {"x": 3})
    (tmp_path / "a" / "x" / "broken.png").write_bytes(b"not an image")
    paths = sorted((tmp_path / "a" / "x").iterdir())
    labels = torch.zeros(len(paths), dtype=torch.int64)
    strict = StreamingBatches(Split(ImageFiles(paths, 8, 0, False), labels), [0.5] * 3, [0.25] * 3, 8, CPU, False)
    with pytest.raises(ConfigError, match="broken.png"):
        list(strict)
    lenient = StreamingBatches(Split(ImageFiles(paths, 8, 0, True), labels), [0.5] * 3, [0.25] * 3, 8, CPU, False)
    assert lenient.num_samples == 4
    (batch,) = list(lenient)
    assert len(batch.targets) == 3 and "broken.png" not in [paths[int(row)].name for row in batch.indices]
    assert lenient.num_samples == 3  # accuracy and loss means divide by the readable samples


def test_the_fingerprint_of_streamed_files_changes_when_a_file_changes(tmp_path):
    write_tree(tmp_path, {"x": 2})
    paths = sorted((tmp_path / "x").iterdir())
    before = ImageFiles(paths, 8, 0, False).fingerprint()
    assert ImageFiles(paths, 8, 0, False).fingerprint() == before
    assert ImageFiles(paths, 16, 0, False).fingerprint() != before
    os.utime(paths[0], ns=(0, 0))
    assert ImageFiles(paths, 8, 0, False).fingerprint() != before


def test_under_torchrun_each_rank_streams_its_share_of_the_single_process_batches(tmp_path):
    noisy_tree(tmp_path, {"a": 8, "b": 8})  # 16 files, global batch 6 over 2 ranks: 6, 6 and a last global batch of 4
    paths = sorted(tmp_path.rglob("*.png"))
    split = Split(ImageFiles(paths, 8, 1, False), torch.tensor([int(path.parent.name == "b") for path in paths]))
    single = [batch.indices.tolist() for batch in StreamingBatches(split, [0.5] * 3, [0.3] * 3, 6, CPU, True, seed=5)]
    per_rank, global_sizes = [], []
    for rank in range(2):
        batches = batches_for_this_rank(split, [0.5] * 3, [0.3] * 3, 6, CPU, True, seed=5, topology=Topology(rank, 2, rank))
        steps = []
        for batch in batches:
            steps.append(batch.indices.tolist())
            global_sizes.append(batch.global_size)
        per_rank.append(steps)
    assert len(per_rank[0]) == len(per_rank[1]) == 3
    assert [first + second for first, second in zip(*per_rank)] == single
    assert global_sizes == [6, 6, 4] * 2  # each batch's own, though the loader prefetches
    with pytest.raises(ConfigError, match="batch_size=5"):
        batches_for_this_rank(split, [0.5] * 3, [0.3] * 3, 5, CPU, True, topology=Topology(0, 2, 0))


def test_dropped_streaming_batches_stop_their_workers_at_once(tmp_path):
    """No reference cycle: the worker processes end when the batches are dropped, not at some later GC."""
    import gc
    import weakref

    noisy_tree(tmp_path, {"a": 4})
    split = Split(ImageFiles(sorted(tmp_path.rglob("*.png")), 8, 1, False), torch.zeros(4, dtype=torch.int64))
    batches = StreamingBatches(split, [0.5] * 3, [0.3] * 3, 2, CPU, True)
    assert len(list(batches)) == 2  # starts the persistent worker
    worker = batches.loader._iterator._workers[0]
    gc.disable()
    try:
        alive = weakref.ref(batches)
        del batches
        assert alive() is None and not worker.is_alive()
    finally:
        gc.enable()


def test_under_torchrun_a_batch_of_only_unreadable_files_is_an_error_not_a_skipped_step(tmp_path):
    noisy_tree(tmp_path, {"a": 1})
    broken = tmp_path / "a" / "broken.png"
    broken.write_bytes(b"not an image")
    split = Split(ImageFiles([broken, tmp_path / "a" / "0.png"], 8, 0, True), torch.zeros(2, dtype=torch.int64))
    rank_zero = batches_for_this_rank(split, [0.5] * 3, [0.3] * 3, 2, CPU, False, topology=Topology(0, 2, 0))  # evaluation share: the broken file
    with pytest.raises(ConfigError, match="every file of one of this rank's batches is unreadable"):
        list(rank_zero)

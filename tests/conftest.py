"""Shared fixtures: running the CLI as a user types it, and tiny data in real on-disk formats."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

# Small budgets so each CLI run takes seconds on 2 CPU cores.
TINY = ["teacher_epochs=2", "student_epochs=2", "trainer.progress=false"]


def compose_config(*overrides: str):
    """kdrun's composed config, in process (as `kdrun train --cfg job` shows it), for config-only tests."""
    from hydra import compose, initialize_config_dir

    from kdrun.config import config_dir, register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def kdrun_env(extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a kdrun subprocess: this checkout first on the path, no inherited HYDRA_FULL_ERROR."""
    env = {key: value for key, value in os.environ.items() if key not in ("HYDRA_FULL_ERROR", "KDRUN_USER_HYDRA_FULL_ERROR")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n 2: two runs at once, so one thread each, not two
        env.setdefault("OMP_NUM_THREADS", "1")  # (oversubscribed cores spin-wait: docs/performance.md)
    env.update(extra_env or {})
    return env


def run_kdrun(*arguments: str, cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m kdrun ...` in a subprocess (the same entry point as the `kdrun` script)."""
    return subprocess.run(
        [sys.executable, "-m", "kdrun", *arguments], cwd=cwd, env=kdrun_env(extra_env), capture_output=True, text=True,
        timeout=600,
    )


@pytest.fixture
def start_paused(tmp_path: Path):
    """Start `kdrun ARGUMENTS` in the background through tests/paused_kdrun.py; returns it and its marker folder.

    pause_after="<phase>:<epoch>": the run writes markers/paused and waits there until markers/release exists,
    so a signal sent after the marker appeared lands at that point, on a fast machine as on a slow one.
    mark_locks: the run writes markers/locking-<entry> just before it takes a model cache lock.
    pause_at_step="<phase>:<step>": the same pause for a `kdrun diffusion` phase, after that optimiser step.
    A run still alive when the test ends (a failed test left it paused) is killed.
    """
    started: list[subprocess.Popen] = []

    def start(*arguments: str, cwd: Path, pause_after: str = "", mark_locks: bool = False,
              pause_at_step: str = "") -> tuple[subprocess.Popen, Path]:
        markers = Path(tempfile.mkdtemp(dir=cwd, prefix="markers-"))
        env = kdrun_env({"KDRUN_TEST_MARKERS": str(markers), "KDRUN_TEST_PAUSE_AFTER": pause_after,
                         "KDRUN_TEST_MARK_LOCKS": "1" if mark_locks else "", "KDRUN_TEST_PAUSE_AT_STEP": pause_at_step})
        command = [sys.executable, str(REPO / "tests" / "paused_kdrun.py"), *arguments]
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(process)
        return process, markers

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def wait_for_marker(process: subprocess.Popen, marker: Path, deadline_seconds: float = 300) -> str:
    """The marker's text once it exists; fails if the process ended before writing it."""
    deadline = time.monotonic() + deadline_seconds
    while not marker.is_file():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{marker.name} never appeared"
        time.sleep(0.05)
    return marker.read_text()


@pytest.fixture
def kdrun_in(tmp_path: Path):
    """Run kdrun with its run dir and teacher cache inside tmp_path; returns (result, run_dir)."""

    def run(*arguments: str, run_name: str = "run") -> tuple[subprocess.CompletedProcess, Path]:
        run_dir = tmp_path / run_name
        result = run_kdrun(
            "train", *arguments, f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path
        )
        return result, run_dir

    return run


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` (uint8) as a gzipped IDX file, header as in the MNIST spec."""
    magic = (0x08 << 8) | array.ndim  # 0x08 = unsigned byte
    header = magic.to_bytes(4, "big") + b"".join(size.to_bytes(4, "big") for size in array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int], label_key: str = "labels") -> None:
    """A batch laid out as the official python version: dict of bytes keys, data (N, 3072) uint8 rows in CHW order."""
    batch = {b"batch_label": b"testing batch", label_key.encode(): labels, b"data": data, b"filenames": [b"x.png"] * len(labels)}
    with open(path, "wb") as stream:
        pickle.dump(batch, stream, protocol=2)


def write_cifar100(root: Path, train_per_class: int, test_per_class: int) -> Path:
    """torchvision's cifar-100-python folder (train, test, meta pickles) under root; each class a distinct colour."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = [label for label in range(100) for _ in range(per_class)]
        data = rng.integers(0, 30, size=(len(labels), 3072)).astype(np.uint8)
        for row, label in enumerate(labels):  # class k: row k % 32 of the red plane at brightness 250 - k
            data[row, (label % 32) * 32 : (label % 32) * 32 + 32] = 250 - label
        write_cifar_batch(folder / name, data, labels, "fine_labels")
    with open(folder / "meta", "wb") as stream:
        pickle.dump({b"fine_label_names": [f"class{k}".encode() for k in range(100)]}, stream, protocol=2)
    return root


def write_tree(root: Path, classes: dict[str, int], size: tuple[int, int] = (20, 14)) -> None:
    """An ImageFolder tree: images alternating JPEG and PNG, one colour per class."""
    from PIL import Image

    for class_index, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for item in range(count):
            colour = (40 * class_index, 255 - 40 * class_index, 100)
            suffix = "jpg" if item % 2 == 0 else "png"
            Image.new("RGB", size, colour).save(root / name / f"{item}.{suffix}")


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    """A 200 + 60 image MNIST in IDX .gz format: each class is a distinct bright square position."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for prefix, count in (("train", 200), ("t10k", 60)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 40, size=(count, 28, 28))
        for index, label in enumerate(labels):
            row, column = divmod(int(label), 5)
            images[index, 4 + row * 10 : 12 + row * 10, 2 + column * 5 : 6 + column * 5] = 250
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder

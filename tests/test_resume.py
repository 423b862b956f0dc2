"""Resume after kill -9 and Ctrl-C, through the CLI: the continued run ends bit for bit like an uninterrupted one;
and when a phase writes its checkpoints (trainer.checkpoint_seconds, the final one without optimizer state)."""

from __future__ import annotations

import functools
import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load

import kdrun.training.checkpoint as checkpoint_module
from conftest import read_metrics, read_summary, run_kdrun, wait_for_marker
from kdrun.data import DATASETS, make_splits
from kdrun.data.batches import InMemoryBatches
from kdrun.methods import CrossEntropy
from kdrun.models import build_model
from kdrun.training.checkpoint import CheckpointStore
from kdrun.training.loop import PhaseSettings, train_phase
from kdrun.training.run_files import Observers

ARGUMENTS = ["teacher_epochs=2", "student_epochs=5", "teacher.hidden=[32]", "dataset.max_train_samples=300",
             "trainer.progress=false", "trainer.checkpoint_seconds=0"]  # 0: a checkpoint after every epoch
TIMING = ("seconds", "samples_per_s")  # the only fields allowed to differ between two runs


@pytest.fixture
def start(start_paused):
    def start_run(run_dir: Path, cache: Path, pause_after: str, *extra: str) -> tuple[subprocess.Popen, Path]:
        """A run of ARGUMENTS that stops and waits after `pause_after` ("<phase>:<epoch>")."""
        return start_paused("train", *ARGUMENTS, f"hydra.run.dir='{run_dir}'", f"cache_dir={cache}", *extra,
                            cwd=run_dir.parent, pause_after=pause_after)

    return start_run


def signal_at_pause(process: subprocess.Popen, markers: Path, signal_number: int, where: str) -> None:
    """The run is waiting at its pause point: the signal lands exactly there, never after the phase."""
    assert wait_for_marker(process, markers / "paused") == where
    assert process.poll() is None  # still waiting: nothing after the pause point has run
    process.send_signal(signal_number)
    process.wait(timeout=120)


def comparable(run_dir: Path) -> tuple[list[dict], dict]:
    metrics = [{key: value for key, value in line.items() if key not in TIMING} for line in read_metrics(run_dir)]
    phases = {name: {key: phase[key] for key in ("source", "test_acc", "test_acc_last", "best_epoch", "best_val_acc")}
              for name, phase in read_summary(run_dir)["phases"].items()}
    return metrics, phases


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted run (its own cache, so it trains every phase)."""
    root = tmp_path_factory.mktemp("reference")
    result = run_kdrun("train", *ARGUMENTS, f"hydra.run.dir={root / 'run'}", f"cache_dir={root / 'cache'}", cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "run"


def test_kill_9_then_ctrl_c_then_resume_ends_bit_for_bit_like_an_uninterrupted_run(reference, tmp_path, start):
    run_dir, cache = tmp_path / "run_T=2,method=weighted", tmp_path / "cache"  # ',' and '=' as in default run dir names
    first, markers = start(run_dir, cache, "independent:1")
    signal_at_pause(first, markers, signal.SIGKILL, "independent 1")
    assert first.returncode == -signal.SIGKILL and not (run_dir / "summary.json").exists()
    assert (run_dir / "checkpoints" / "independent.safetensors").is_file()
    assert [(line["phase"], line["epoch"]) for line in read_metrics(run_dir)][-1] == ("independent", 1)  # mid-phase

    changed = run_kdrun("train", *ARGUMENTS, "T=8", f"hydra.run.dir='{run_dir}'", f"cache_dir={cache}", "resume=true",
                        cwd=tmp_path)
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, changed.stderr
    assert "different config" in changed.stderr and "T=2.0, now 8.0" in changed.stderr
    assert (run_dir / "checkpoints" / "independent.safetensors").is_file()  # nothing of the killed run was lost

    second, markers = start(run_dir, cache, "distilled:2", "resume=true")  # the same command, resumed; Ctrl-C
    signal_at_pause(second, markers, signal.SIGINT, "distilled 2")
    stderr = second.stderr.read()
    assert second.returncode == 130 and "Traceback" not in stderr
    error_lines = [line for line in stderr.splitlines() if line.startswith("kdrun: error:")]
    assert len(error_lines) == 1 and "interrupted" in error_lines[0] and "kdrun resume" in error_lines[0]
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and "distilled" not in summary["phases"]
    assert (run_dir / "checkpoints" / "distilled.safetensors").is_file()
    assert [line["epoch"] for line in read_metrics(run_dir) if line["phase"] == "distilled"] == [1, 2]  # mid-phase
    # a kill between an epoch's metrics line and its checkpoint: that line must not appear twice
    done = sum(line["phase"] == "distilled" for line in read_metrics(run_dir))
    with open(run_dir / "metrics.jsonl", "a") as stream:
        stream.write(json.dumps({"phase": "distilled", "epoch": done + 1, "loss": {}}) + "\n" + '{"phase": "disti')

    result = run_kdrun("resume", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resumed from distilled.safetensors" in result.stderr
    assert "teacher: loaded from cache" in result.stderr and "independent: loaded from cache" in result.stderr
    assert comparable(run_dir) == comparable(reference)
    assert same_weights(run_dir / "distilled.safetensors", reference / "distilled.safetensors")
    assert read_summary(run_dir)["status"] == "completed" and not (run_dir / "checkpoints").exists()

    again = run_kdrun("resume", str(run_dir), cwd=tmp_path)
    assert again.returncode == 2 and "already completed" in again.stderr and again.stderr.count("\n") == 1


def test_resume_with_the_default_checkpoint_interval(reference, tmp_path, start):
    """Short phases write only their final checkpoint: a kill loses the phase under way, which trains again."""
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    first, markers = start(run_dir, cache, "teacher:2", "trainer.checkpoint_seconds=30")
    signal_at_pause(first, markers, signal.SIGKILL, "teacher 2")  # the teacher's last epoch, its checkpoint written
    assert not (run_dir / "checkpoints" / "independent.safetensors").exists()
    assert first.returncode == -signal.SIGKILL
    result = run_kdrun("resume", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert comparable(run_dir) == comparable(reference)  # the teacher's source is still "trained" (this run trained it)
    assert same_weights(run_dir / "distilled.safetensors", reference / "distilled.safetensors")


def same_weights(first: Path, second: Path) -> bool:
    """Bit-identical tensors and equal metadata (safetensors may order the header's metadata keys differently)."""
    with safe_open(str(first), "pt") as one, safe_open(str(second), "pt") as other:
        if one.metadata() != other.metadata() or sorted(one.keys()) != sorted(other.keys()):
            return False
        return all(one.get_tensor(key).numpy().tobytes() == other.get_tensor(key).numpy().tobytes() for key in one.keys())


# -- when checkpoints are written (unit level, through the one training loop) ------------------------
def train_with_checkpoints(directory: Path, interval_seconds: float, resume: bool = False, epochs: int = 4):
    """One phase on digits through the real loop, with a CheckpointStore in `directory`."""
    data = make_splits(DATASETS.build("digits", 0), 0.1, 300, seed=0)
    cpu = torch.device("cpu")

    def batches(split: str, shuffle: bool = False) -> InMemoryBatches:
        return InMemoryBatches(getattr(data, split), data.mean, data.std, 32, cpu, shuffle, seed=0)

    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, 10, hidden=[16], dropout=0.5)
    store = CheckpointStore(directory, {"run": "config"}, resume, interval_seconds)
    settings = PhaseSettings(epochs, functools.partial(torch.optim.Adam, lr=1e-3), checkpoint=store.phase("phase"))
    result = train_phase("phase", model, CrossEntropy(), batches("train", True), batches("val"), batches("test"),
                         settings, Observers([]))
    return result, model


def written_checkpoints(monkeypatch) -> list[dict]:
    """Record the header of every checkpoint file written from here on."""
    headers = []
    original = checkpoint_module.write_bytes_atomic

    def recording(path: Path, payload: bytes) -> None:
        original(path, payload)
        with safe_open(str(path), "pt") as stream:
            headers.append(json.loads(stream.metadata()[checkpoint_module.METADATA_KEY]))
        assert load(payload)  # the bytes written are a whole safetensors file

    monkeypatch.setattr(checkpoint_module, "write_bytes_atomic", recording)
    return headers


@pytest.mark.parametrize("interval, epochs_written", [(0.0, [1, 2, 3, 4]), (3600.0, [4])])
def test_checkpoints_after_the_interval_and_after_the_last_epoch(monkeypatch, tmp_path, interval, epochs_written):
    headers = written_checkpoints(monkeypatch)
    train_with_checkpoints(tmp_path / "checkpoints", interval)
    assert [header["epoch"] for header in headers] == epochs_written
    # a finished phase's checkpoint needs no optimizer state: no later epoch will use it
    assert [header["optimizer"] is None for header in headers] == [epoch == 4 for epoch in epochs_written]
    assert (tmp_path / "checkpoints" / "config.json").is_file()  # recorded when the phase started


def test_a_finished_phase_resumes_from_its_last_checkpoint_without_training(tmp_path):
    finished, model = train_with_checkpoints(tmp_path / "checkpoints", 3600.0)
    resumed, resumed_model = train_with_checkpoints(tmp_path / "checkpoints", 3600.0, resume=True)
    assert [record.to_dict() for record in resumed.history] == [record.to_dict() for record in finished.history]
    assert (resumed.best_epoch, resumed.test_acc, resumed.test_acc_last) == (finished.best_epoch, finished.test_acc,
                                                                            finished.test_acc_last)
    for name, value in model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[name]), name

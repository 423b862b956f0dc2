"""Resume after kill -9 and Ctrl-C, through the CLI: the continued run ends bit for bit like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, read_metrics, read_summary, run_kdrun

# Small but not instant: epochs must last long enough for a signal to land inside a phase.
ARGUMENTS = ["teacher_epochs=2", "student_epochs=5", "teacher.hidden=[32]", "dataset.max_train_samples=300",
             "trainer.progress=false"]
TIMING = ("seconds", "samples_per_s")  # the only fields allowed to differ between two runs


def start(run_dir: Path, cache: Path, *extra: str) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key not in ("HYDRA_FULL_ERROR", "KDRUN_USER_HYDRA_FULL_ERROR")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "kdrun", "train", *ARGUMENTS, f"hydra.run.dir='{run_dir}'", f"cache_dir={cache}", *extra]
    return subprocess.Popen(command, cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def signal_when(process: subprocess.Popen, path: Path, signal_number: int) -> None:
    """Send the signal as soon as `path` (a phase's first checkpoint) exists: the phase is then mid-way."""
    deadline = time.monotonic() + 120
    while not path.is_file():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
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


def test_kill_9_then_ctrl_c_then_resume_ends_bit_for_bit_like_an_uninterrupted_run(reference, tmp_path):
    run_dir, cache = tmp_path / "run_T=4,method=weighted", tmp_path / "cache"  # ',' and '=' as in default run dir names
    first = start(run_dir, cache)
    signal_when(first, run_dir / "checkpoints" / "independent.safetensors", signal.SIGKILL)
    assert first.returncode == -signal.SIGKILL and not (run_dir / "summary.json").exists()
    assert not any(line["phase"] == "distilled" for line in read_metrics(run_dir))  # killed inside the independent phase

    changed = run_kdrun("train", *ARGUMENTS, "T=8", f"hydra.run.dir='{run_dir}'", f"cache_dir={cache}", "resume=true",
                        cwd=tmp_path)
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, changed.stderr
    assert "different config" in changed.stderr and "T=4.0, now 8.0" in changed.stderr
    assert (run_dir / "checkpoints" / "independent.safetensors").is_file()  # nothing of the killed run was lost

    second = start(run_dir, cache, "resume=true")  # the same command again, with resume=true; then Ctrl-C
    signal_when(second, run_dir / "checkpoints" / "distilled.safetensors", signal.SIGINT)
    stderr = second.stderr.read()
    assert second.returncode == 130 and "Traceback" not in stderr
    error_lines = [line for line in stderr.splitlines() if line.startswith("kdrun: error:")]
    assert len(error_lines) == 1 and "interrupted" in error_lines[0] and "kdrun resume" in error_lines[0]
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and "distilled" not in summary["phases"]
    assert (run_dir / "checkpoints" / "distilled.safetensors").is_file()
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


def same_weights(first: Path, second: Path) -> bool:
    """Bit-identical tensors and equal metadata (safetensors may order the header's metadata keys differently)."""
    from safetensors import safe_open

    with safe_open(str(first), "pt") as one, safe_open(str(second), "pt") as other:
        if one.metadata() != other.metadata() or sorted(one.keys()) != sorted(other.keys()):
            return False
        return all(one.get_tensor(key).numpy().tobytes() == other.get_tensor(key).numpy().tobytes() for key in one.keys())

"""The CLI as a user types it, through a subprocess: outputs, cache, determinism, errors, sweeps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import TINY, read_metrics, read_summary, run_kdrun

PHASES = ("teacher", "independent", "distilled")


def test_train_writes_every_file_with_consistent_content(kdrun_in):
    result, run_dir = kdrun_in(*TINY, "method=basic", "T=10")
    assert result.returncode == 0, result.stderr
    for name in ("summary.json", "metrics.jsonl", "train.log", ".hydra/config.yaml", "independent.safetensors", "distilled.safetensors"):
        assert (run_dir / name).exists(), name
    summary, metrics = read_summary(run_dir), read_metrics(run_dir)
    assert summary["status"] == "completed" and {"method=basic", "T=10"} <= set(summary["overrides"])
    assert summary["phases"]["distilled"]["method"] == "basic" and summary["phases"]["distilled"]["T"] == 10.0
    assert [(m["phase"], m["epoch"]) for m in metrics] == [(p, e) for p in PHASES for e in (1, 2)]
    assert set(metrics[-1]["loss"]) == {"ce", "kd"} and metrics[0]["T"] is None and metrics[-1]["T"] == 10.0
    for phase in PHASES:
        record = summary["phases"][phase]
        lines = [m for m in metrics if m["phase"] == phase]
        assert record["source"] == "trained"
        assert record["best_val_acc"] == lines[record["best_epoch"] - 1]["val_acc"] == max(m["val_acc"] for m in lines)
        assert 0 <= record["test_acc"] <= 1 and record["params"] > 0
    teacher, independent, distilled = (summary["phases"][p]["test_acc"] for p in PHASES)
    expected_gap = (distilled - independent) / (teacher - independent) if teacher > independent else None
    assert summary["gap_recovered"] == pytest.approx(expected_gap)
    # the printed table and train.log carry the same numbers
    assert f"{distilled:.4f}" in result.stdout and f"{distilled:.4f}" in (run_dir / "train.log").read_text()
    assert "Traceback" not in result.stderr


def test_second_run_loads_teacher_from_cache_and_same_seed_is_identical(kdrun_in):
    first, first_dir = kdrun_in(*TINY, "method=weighted", "alpha=0.7", "T=4", run_name="first")
    second, second_dir = kdrun_in(*TINY, "method=weighted", "alpha=0.7", "T=4", run_name="second")
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    a, b = read_summary(first_dir), read_summary(second_dir)
    assert a["phases"]["teacher"]["source"] == "trained" and b["phases"]["teacher"]["source"] == "cache"
    assert "loaded from cache" in second.stderr
    for phase in PHASES:
        assert a["phases"][phase]["test_acc"] == b["phases"][phase]["test_acc"]
    assert not any(m["phase"] == "teacher" for m in read_metrics(second_dir))
    changed, changed_dir = kdrun_in(*TINY, "teacher.hidden=[64]", run_name="changed")
    assert changed.returncode == 0 and read_summary(changed_dir)["phases"]["teacher"]["source"] == "trained"


def test_teacher_checkpoint_and_skipping_the_independent_student(kdrun_in, tmp_path):
    first, first_dir = kdrun_in(*TINY, run_name="first")
    weights = read_summary(first_dir)["phases"]["teacher"]["weights"]
    result, run_dir = kdrun_in(*TINY, f"teacher.checkpoint={weights}", "independent=false", run_name="ckpt")
    assert result.returncode == 0, result.stderr
    summary = read_summary(run_dir)
    assert summary["phases"]["teacher"]["source"] == "checkpoint" and "independent" not in summary["phases"]
    assert summary["phases"]["teacher"]["test_acc"] == read_summary(first_dir)["phases"]["teacher"]["test_acc"]
    assert summary["gap_recovered"] is None


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["T=0"], "T=0.0 must be > 0"),
        (["alpha=1.5"], "alpha=1.5 is outside [0, 1]"),
        (["trainer.threads=0"], "trainer.threads=0 must be auto or an integer >= 1"),
        (["trainer.threads=two"], "trainer.threads=two must be auto or an integer >= 1"),
        (["trainer.checkpoint_seconds=-1"], "trainer.checkpoint_seconds=-1.0 must be >= 0"),
        (["trainer.eval_batch_size=big"], "trainer.eval_batch_size=big must be auto or an integer >= 1"),
        (["method=nope"], "unknown method 'nope' (choose one of: activation_kl, adaptive_T, attention, basic"),
        (["T=abc"], "could not be converted to Float"),
        (["teacher_epochs=-1"], "teacher_epochs=-1 is negative"),
        (["batch_size=0"], "batch_size=0 must be >= 1"),
        (["lrr=0.1"], "unknown config key 'lrr'"),
        (["+foo=1"], "unknown config key 'foo'"),
        (["teacher.hiden=[3]"], "unknown config key 'teacher.hiden'"),
        (["+student.widths=[3]"], "model 'mlp' has no option 'widths'"),
        (["dataset.augment={name:shift,pixels:0}"], "shift pixels=0 must be an integer >= 1"),
        (["dataset=mnist", "dataset.download=false"], "MNIST files not found"),
        (["teacher.checkpoint=/no/such/file.safetensors"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_no_run(kdrun_in, arguments, expected):
    result, run_dir = kdrun_in(*TINY, *arguments, "dataset.root=/no/such/dir" if "dataset=mnist" in arguments else "seed=0")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("kdrun: error: ") and expected in lines[-1], lines
    assert "Traceback" not in result.stderr
    assert not (run_dir / "summary.json").exists() and not run_dir.exists()


@pytest.mark.parametrize("value, accepted", [("auto", True), (1, True), (8, True), (0, False), (1.5, False), (True, False), ("2", False)])
def test_auto_or_count_keys(value, accepted):
    """trainer.threads and trainer.eval_batch_size are typed Any (for `auto`), so validate checks the rest."""
    from kdrun.config import _check_auto_or_count
    from kdrun.errors import ConfigError

    if accepted:
        _check_auto_or_count("trainer.threads", value)
    else:
        with pytest.raises(ConfigError, match="must be auto or an integer >= 1"):
            _check_auto_or_count("trainer.threads", value)


def test_full_error_shows_traceback(kdrun_in, tmp_path):
    result = run_kdrun("train", "T=0", f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path, extra_env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_mnist_from_local_idx_files(kdrun_in, tiny_mnist):
    result, run_dir = kdrun_in(*TINY, "dataset=mnist", f"dataset.root={tiny_mnist}", "teacher.hidden=[32]")
    assert result.returncode == 0, result.stderr
    summary = read_summary(run_dir)
    assert summary["dataset"]["train"] == 180 and summary["dataset"]["val"] == 20 and summary["dataset"]["test"] == 60
    assert summary["phases"]["teacher"]["params"] == 784 * 32 + 32 + 32 * 10 + 10


def test_multirun_sweep_runs_every_combination(tmp_path):
    result = run_kdrun(
        "train", "-m", "alpha=0.1,0.9", "T=2,8", *TINY, f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summaries = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/summary.json"))]
    assert sorted((s["phases"]["distilled"]["alpha"], s["phases"]["distilled"]["T"]) for s in summaries) == [
        (0.1, 2.0), (0.1, 8.0), (0.9, 2.0), (0.9, 8.0)
    ]
    assert [s["phases"]["teacher"]["source"] for s in summaries].count("trained") == 1


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["--help"], "train"),
        (["train", "--help"], "kdrun train"),
        (["train", "--cfg", "job"], "T: 2.0"),
        (["train", "method=basic", "--cfg", "job"], "name: basic"),  # flags after overrides work
        (["--version"], "kdrun 0.1.0"),
    ],
)
def test_help_and_config_printing(tmp_path, arguments, expected):
    result = run_kdrun(*arguments, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
    assert not (tmp_path / "outputs").exists()  # printing config or help creates no run


def test_train_help_lists_groups(tmp_path):
    result = run_kdrun("train", "--help", cwd=tmp_path)
    for group in ("dataset: cifar10, cifar100, digits, fashion_mnist", "method: activation_kl, adaptive_T, attention, basic", "mnist_mlp"):
        assert group in result.stdout


def test_installed_console_script_from_another_directory(tmp_path):
    """The `kdrun` script on PATH (installed in CI) finds its shipped conf/ from any directory."""
    import sys

    beside_python = Path(sys.executable).parent / "kdrun"
    script = str(beside_python) if beside_python.exists() else shutil.which("kdrun")
    if script is None:
        pytest.skip("kdrun is not installed in this environment")
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR",)}
    result = subprocess.run([script, "train", "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "teacher_epochs: 20" in result.stdout, result.stderr

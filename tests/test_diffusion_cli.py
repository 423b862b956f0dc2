"""`kdrun diffusion` through the CLI on tiny digits: every file, every table row, the cache, resume, errors."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from conftest import read_metrics, read_summary, run_kdrun, wait_for_marker

# 4 -> 2 -> 1 steps with a U-Net of 8/16 channels, 64 training images, 24 samples per FID: seconds per run.
TINY = [
    "teacher.train_steps=8", "teacher.batch_size=16", "teacher.warmup_steps=2", "teacher.sampling_steps=4",
    "distill.target_steps=1", "distill.train_steps=4", "distill.batch_size=16", "network.channels=[8,16]",
    "network.norm_groups=4", "fid.samples=24", "fid.batch_size=24", "grid_samples=8", "fid.classifier.widths=[4,8]",
    "fid.classifier.hidden=8", "fid.classifier_training.epochs=1", "dataset.max_train_samples=64", "trainer.log_every=2",
    "trainer.progress=false", "trainer.threads=1", "trainer.checkpoint_seconds=0",
]
TIMING = ("seconds", "samples_per_s", "seconds_per_1000")  # the only fields allowed to differ between two runs


def diffusion(root: Path, *extra: str, run: str = "run") -> tuple[subprocess.CompletedProcess, Path]:
    run_dir = root / run
    result = run_kdrun("diffusion", *TINY, *extra, f"hydra.run.dir='{run_dir}'", f"cache_dir={root / 'cache'}", cwd=root)
    return result, run_dir


def comparable(run_dir: Path) -> list[dict]:
    return [{key: value for key, value in line.items() if key not in TIMING} for line in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One uninterrupted tiny run, with its own cache (it trains the teacher and the FID classifier)."""
    root = tmp_path_factory.mktemp("diffusion")
    result, run_dir = diffusion(root)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_a_run_writes_every_file_and_a_row_per_step_count(finished):
    summary = read_summary(finished)
    assert summary["kind"] == "diffusion" and summary["status"] == "completed"
    assert [row["steps"] for row in summary["rows"]] == [4, 2, 1]
    assert all(row["teacher_fid"] is not None and row["teacher_seconds_per_1000"] > 0 for row in summary["rows"])
    assert summary["rows"][0]["distilled_fid"] is None  # N steps: the teacher itself, nothing distilled yet
    assert all(row["distilled_fid"] is not None for row in summary["rows"][1:])
    assert summary["teacher"]["source"] == "trained" and summary["fid"]["kind"] == "classifier"
    assert "not Inception" in summary["fid"]["label"] and summary["fid"]["samples"] == 24
    for row in summary["rows"]:
        for grid in (row["teacher_grid"], row["distilled_grid"]):
            assert grid is None or (finished / grid).is_file()
    assert {path.name for path in (finished / "samples").iterdir()} == {
        "steps_0004_teacher_ddim.png", "steps_0002_teacher_ddim.png", "steps_0001_teacher_ddim.png",
        "steps_0002_distilled.png", "steps_0001_distilled.png"}
    assert (finished / "fid_vs_steps.png").is_file() and (finished / "samples_overview.png").is_file()
    assert (finished / ".hydra" / "config.yaml").is_file() and "round 2" in (finished / "train.log").read_text()
    assert sorted(path.name for path in (finished / "students").iterdir()) == ["steps_0001.safetensors", "steps_0002.safetensors"]
    assert not (finished / "checkpoints").exists()  # a completed run is not resumed
    lines = read_metrics(finished)
    assert [(line["phase"], line.get("round"), line["steps"]) for line in lines if line["phase"] != "evaluation"] == [
        ("teacher", 0, 4), ("distill", 1, 2), ("distill", 2, 1)]
    assert sorted((line["sampler"], line["steps"]) for line in lines if line["phase"] == "evaluation") == [
        ("distilled", 1), ("distilled", 2), ("teacher_ddim", 1), ("teacher_ddim", 2), ("teacher_ddim", 4)]


def test_report_reads_diffusion_run_dirs(finished):
    result = run_kdrun("report", str(finished.parent), cwd=finished.parent)
    assert result.returncode == 0, result.stderr
    markdown = (finished.parent / "report_diffusion.md").read_text()
    assert "| steps | teacher DDIM | distilled |" in markdown and markdown.count("\n| 2 |") == 1
    assert (finished.parent / "fid_vs_steps.png").is_file()
    assert len((finished.parent / "report_diffusion.csv").read_text().splitlines()) == 1 + 3


def test_a_second_run_reuses_the_cached_teacher_and_classifier_and_measures_the_same(finished):
    result, run_dir = diffusion(finished.parent, run="again")
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = read_summary(finished), read_summary(run_dir)
    assert second["teacher"]["source"] == "cache" and second["fid"]["classifier"]["source"] == "cache"
    assert [row["teacher_fid"] for row in second["rows"]] == [row["teacher_fid"] for row in first["rows"]]
    assert [row["distilled_fid"] for row in second["rows"]] == [row["distilled_fid"] for row in first["rows"]]


def test_ctrl_c_then_resume_ends_like_an_uninterrupted_run(finished, tmp_path, start_paused):
    run_dir = tmp_path / "run"
    process, markers = start_paused("diffusion", *TINY, f"hydra.run.dir='{run_dir}'", f"cache_dir={tmp_path / 'cache'}",
                                    cwd=tmp_path, pause_at_step="distill_2:2")
    assert wait_for_marker(process, markers / "paused") == "distill_2 2"
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)
    stderr = process.stderr.read()
    assert process.returncode == 130 and "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("kdrun: error:")][0].count("kdrun resume") == 1
    assert read_summary(run_dir)["status"] == "interrupted"
    assert (run_dir / "checkpoints" / "distill_2.safetensors").is_file()

    result = run_kdrun("resume", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distill_2: resumed after step 2 of 4" in result.stderr and "teacher: loaded from cache" in result.stderr
    assert comparable(run_dir) == comparable(finished)
    again = run_kdrun("resume", str(run_dir), cwd=tmp_path)
    assert again.returncode == 2 and "already completed" in again.stderr and again.stderr.count("\n") == 1


def mlp_weights(path: Path) -> Path:
    from kdrun.files import save_weights
    from kdrun.models import build_model

    save_weights(path, build_model("mlp", (1, 8, 8), 10, hidden=(4,)))
    return path


@pytest.mark.parametrize("overrides, message", [
    (["distill.target_steps=3"], "distill.target_steps=3 is not reached by halving teacher.sampling_steps=4"),
    (["fid.inception_weights=/nonexistent/inception.pth"], "fid.inception_weights=/nonexistent/inception.pth does not exist"),
    (["network.checkpoint=MLP"], "does not match the configured model: a different architecture"),
])
def test_bad_input_is_one_error_line_exit_2_and_leaves_no_run_dir(tmp_path, overrides, message):
    """Through the CLI: a config check, a missing file, a checkpoint of another architecture (found before
    anything trains). The other checks are tested in-process in test_diffusion.py."""
    overrides = [item.replace("MLP", str(mlp_weights(tmp_path / "mlp.safetensors"))) for item in overrides]
    result, run_dir = diffusion(tmp_path, *overrides)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("kdrun: error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not run_dir.exists() and not (tmp_path / "cache" / "diffusion_teachers").exists()


def test_help_lists_the_presets_and_the_config(tmp_path):
    help_text = run_kdrun("diffusion", "--help", cwd=tmp_path).stdout
    assert "kdrun diffusion" in help_text and "diffusion/preset: cifar10, digits, mnist" in help_text
    assert "sampling_steps: 32" in help_text


def test_a_sweep_writes_a_row_per_job_with_every_step_counts_fids(tmp_path):
    """`kdrun diffusion -m`: sweep.csv / sweep.jsonl as `kdrun train -m` writes them, with FID columns per step count."""
    import csv

    sweep = tmp_path / "sweep"
    result = run_kdrun("diffusion", "-m", *TINY, "teacher.sampling_steps=2,4", f"hydra.sweep.dir='{sweep}'",
                       f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((sweep / "sweep.csv").open()))
    assert [row["job"] for row in rows] == ["0", "1"] and {row["status"] for row in rows} == {"completed"}
    assert "teacher_fid_4" in rows[0] and rows[0]["teacher_fid_4"] == ""  # job 0 starts at 2 steps
    for row in rows:
        summary = read_summary(Path(row["run_dir"]))
        for step_row in summary["rows"]:
            for sampler in ("teacher", "distilled"):
                value = step_row[f"{sampler}_fid"]
                assert row[f"{sampler}_fid_{step_row['steps']}"] == ("" if value is None else str(value))

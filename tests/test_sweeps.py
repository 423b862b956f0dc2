"""A 2x2 alpha x T sweep: teacher and independent student trained once each, one sweep row per job, report."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_kdrun

TINY = ["teacher_epochs=2", "student_epochs=2", "trainer.progress=false", "teacher.hidden=[64]", "dataset.max_train_samples=300"]
LAUNCHERS = {"basic": [], "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]}


def summaries_below(sweep_dir: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(sweep_dir.rglob("summary.json"))]


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_sweep_reuses_models_aggregates_and_reports(tmp_path: Path, launcher: str) -> None:
    sweep_dir = tmp_path / "sweep"
    result = run_kdrun(
        "train", "-m", "alpha=0.2,0.8", "T=2,4", *TINY, *LAUNCHERS[launcher],
        f"hydra.sweep.dir={sweep_dir}", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "kdrun report " in result.stdout

    summaries = summaries_below(sweep_dir)
    assert len(summaries) == 4 and {summary["status"] for summary in summaries} == {"completed"}
    for phase in ("teacher", "independent"):
        sources = sorted(summary["phases"][phase]["source"] for summary in summaries)
        assert sources == ["cache", "cache", "cache", "trained"], (phase, sources)
        assert len({summary["phases"][phase]["test_acc"] for summary in summaries}) == 1  # the same model each time
    assert {summary["phases"]["distilled"]["source"] for summary in summaries} == {"trained"}
    if launcher == "joblib":  # two jobs at once share the cores instead of oversubscribing them
        threads = max(1, (os.cpu_count() or 1) // 2)
        assert all(f"CPU threads: {threads} (2 job(s) at once)" in log.read_text() for log in sweep_dir.rglob("train.log"))

    with open(sweep_dir / "sweep.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert sorted(int(row["job"]) for row in rows) == [0, 1, 2, 3]
    assert {(float(row["alpha"]), float(row["T"])) for row in rows} == {(0.2, 2.0), (0.2, 4.0), (0.8, 2.0), (0.8, 4.0)}
    assert len((sweep_dir / "sweep.jsonl").read_text().splitlines()) == 4

    report = run_kdrun("report", str(sweep_dir), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    check_report_matches(sweep_dir, summaries)


def check_report_matches(sweep_dir: Path, summaries: list[dict]) -> None:
    with open(sweep_dir / "report.csv") as stream:
        rows = {row["run_dir"]: row for row in csv.DictReader(stream)}
    assert len(rows) == len(summaries)
    for summary in summaries:
        row = rows[str(Path(summary["run_dir"]))]
        for phase in ("teacher", "independent", "distilled"):
            assert float(row[f"{phase}_test_acc"]) == pytest.approx(summary["phases"][phase]["test_acc"])
            assert float(row[f"{phase}_best_val_acc"]) == pytest.approx(summary["phases"][phase]["best_val_acc"])
    for name in ("accuracy_vs_T.png", "heatmap_alpha_T.png", "learning_curves.png"):
        with Image.open(sweep_dir / name) as image:
            image.load()
            assert image.width > 300 and image.height > 200
            assert len(set(image.convert("L").tobytes())) > 10  # not a blank canvas
    markdown = (sweep_dir / "report.md").read_text()
    assert "validation" in markdown and "test" in markdown and "4 completed" in markdown


def test_optuna_sweep_maximises_the_distilled_validation_accuracy(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep_dir = tmp_path / "optuna"
    result = run_kdrun(
        "train", "-m", "hydra/sweeper=kdrun_optuna", "hydra.sweeper.n_trials=2", *TINY,
        f"hydra.sweep.dir={sweep_dir}", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summaries = summaries_below(sweep_dir)
    assert len(summaries) == 2 and len({(s["phases"]["distilled"]["alpha"], s["phases"]["distilled"]["T"]) for s in summaries}) == 2
    best_value = float(yaml_value(sweep_dir / "optimization_results.yaml", "best_value"))
    assert best_value == max(summary["phases"]["distilled"]["best_val_acc"] for summary in summaries)


def yaml_value(path: Path, key: str) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.load(path)[key]


def test_tensorboard_event_files_per_phase(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    result = run_kdrun("train", *TINY, f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for phase in ("teacher", "independent", "distilled"):
        events = EventAccumulator(str(run_dir / "tensorboard" / phase))
        events.Reload()
        val_curve = [event.value for event in events.Scalars("accuracy/val")]
        expected = [line["val_acc"] for line in metrics if line["phase"] == phase]
        assert val_curve == pytest.approx(expected)
        assert "loss/ce" in events.Tags()["scalars"]


def test_a_key_of_swept_group_options_needs_plus_plus_and_each_job_still_checks_it(tmp_path: Path) -> None:
    """Hydra composes a sweep's base config with the default method (no `student_layer`) before sweeping."""
    common = ["-m", "method=fitnets,cosine_hidden", *TINY, f"cache_dir={tmp_path / 'cache'}"]
    plain = run_kdrun("train", *common, "method.student_layer=5", f"hydra.sweep.dir={tmp_path / 'refused'}", cwd=tmp_path)
    assert plain.returncode == 2 and plain.stderr.count("\n") == 1, plain.stderr
    assert "write ++method.student_layer=" in plain.stderr and not (tmp_path / "refused").exists()

    layers = ["++method.student_layer=5", "++method.teacher_layer=2"]  # the tiny teacher has one hidden layer
    forced = run_kdrun("train", *common, *layers, f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-2000:]
    summaries = summaries_below(tmp_path / "sweep")
    assert [summary["status"] for summary in summaries] == ["completed", "completed"]

"""`kdrun report`: failed jobs listed while the rest is reported; seed aggregation; empty paths."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from conftest import run_kdrun
from kdrun.report import group_runs, load_runs

TINY = ["teacher_epochs=1", "student_epochs=1", "trainer.progress=false", "teacher.hidden=[32]", "dataset.max_train_samples=200"]


def test_sweep_with_a_failed_job_continues_and_report_lists_it(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = run_kdrun(
        "train", "-m", "T=-1,2", *TINY, f"hydra.sweep.dir={sweep_dir}", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path
    )
    assert result.returncode == 1  # the sweep as a whole did not complete ...
    assert result.stderr.strip().splitlines()[-1].startswith("kdrun: error: 1 job(s) of the sweep failed")
    with open(sweep_dir / "sweep.csv") as stream:
        rows = {int(row["job"]): row for row in csv.DictReader(stream)}
    assert rows[0]["status"] == "failed" and "T=-1" in rows[0]["error"]
    assert rows[1]["status"] == "completed"  # ... but the job after the failed one ran (basic launcher)

    report = run_kdrun("report", str(sweep_dir), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "failed" in report.stdout and "T=-1" in report.stdout
    markdown = (sweep_dir / "report.md").read_text()
    assert "## Failed runs" in markdown and "1 completed, 1 failed" in markdown
    with open(sweep_dir / "report.csv") as stream:
        statuses = sorted(row["status"] for row in csv.DictReader(stream))
    assert statuses == ["completed", "failed"]
    assert (sweep_dir / "heatmap_alpha_T.png").stat().st_size > 1000


def test_report_on_a_path_without_runs_is_one_line_error(tmp_path: Path) -> None:
    for path in (tmp_path, tmp_path / "missing"):
        result = run_kdrun("report", str(path), cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.startswith("kdrun: error: ") and len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "report.md").exists()


def write_summary(path: Path, seed: int, alpha: float, distilled: float, teacher_weights: str, overrides: tuple[str, ...] = ()) -> None:
    path.mkdir(parents=True)
    phases = {
        "teacher": {"source": "cache", "test_acc": 0.9, "best_val_acc": 0.91, "weights": teacher_weights},
        "independent": {"source": "trained", "test_acc": 0.5 + seed / 100, "best_val_acc": 0.5, "weights": f"s{seed}"},
        "distilled": {"source": "trained", "test_acc": distilled, "best_val_acc": distilled, "method": "weighted", "T": 4.0, "alpha": alpha},
    }
    summary = {"status": "completed", "run_dir": str(path), "seed": seed, "overrides": list(overrides), "phases": phases, "gap_recovered": None}
    path.joinpath("summary.json").write_text(json.dumps(summary))


def test_seeds_aggregate_to_mean_and_sample_std(tmp_path: Path) -> None:
    values = {0: 0.60, 1: 0.64, 2: 0.71}
    for seed, value in values.items():
        write_summary(tmp_path / f"a{seed}", seed, 0.5, value, "teacher-1")
    write_summary(tmp_path / "b0", 0, 0.9, 0.55, "teacher-1")
    groups = group_runs(load_runs(tmp_path))
    assert [(group.alpha, len(group.runs)) for group in groups] == [(0.5, 3), (0.9, 1)]
    mean, std = groups[0].mean_std("distilled")
    assert mean == sum(values.values()) / 3
    assert std == statistics.stdev(values.values())
    assert groups[1].mean_std("distilled") == (0.55, 0.0)


def test_other_swept_settings_are_grouped_apart_not_averaged(tmp_path: Path) -> None:
    for seed in (0, 1):
        for scaled, value in (("true", 0.7), ("false", 0.8)):
            overrides = (f"seed={seed}", f"method.scale_by_T2={scaled}", "dataset.root=/data")
            write_summary(tmp_path / f"{scaled}{seed}", seed, 0.5, value + seed / 100, "teacher-1", overrides)
    groups = group_runs(load_runs(tmp_path))
    assert [(group.label(), len(group.runs)) for group in groups] == [
        ("weighted (method.scale_by_T2=false)", 2), ("weighted (method.scale_by_T2=true)", 2),
    ]  # dataset.root is the same everywhere, so it does not split or label the groups
    assert groups[0].mean_std("distilled")[0] == (0.8 + 0.81) / 2


def test_corrupt_summaries_are_named_and_the_readable_runs_reported(tmp_path: Path) -> None:
    write_summary(tmp_path / "a0", 0, 0.5, 0.6, "teacher-1")
    write_summary(tmp_path / "a1", 1, 0.5, 0.7, "teacher-1")
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "summary.json").write_text('{"status": "completed", "phases": {"teach')  # cut off mid-write
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "summary.json").write_text("[1, 2]")
    result = run_kdrun("report", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # something was readable: the report is written
    warnings = [line for line in result.stderr.splitlines() if line.startswith("kdrun: warning: ")]
    assert len(warnings) == 2 and "Traceback" not in result.stderr
    assert f"skipped {tmp_path / 'list' / 'summary.json'} is unreadable (not a kdrun summary" in warnings[0]
    assert f"skipped {tmp_path / 'torn' / 'summary.json'} is unreadable (Unterminated string" in warnings[1]
    assert all(line.endswith("reporting the 2 readable run(s)") for line in warnings)
    with open(tmp_path / "report.csv") as stream:
        assert sorted(row["seed"] for row in csv.DictReader(stream)) == ["0", "1"]


def test_only_corrupt_summaries_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text("")
    result = run_kdrun("report", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"kdrun: error: no readable run under {tmp_path}: {tmp_path / 'run' / 'summary.json'} is unreadable "
        "(Expecting value: line 1 column 1 (char 0)) (fix or delete the unreadable summary.json files; each run "
        "writes its own when it ends)")
    assert not (tmp_path / "report.md").exists()

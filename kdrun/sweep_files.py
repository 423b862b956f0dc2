"""What a multirun job adds to its sweep dir: a row in `sweep.jsonl` and `sweep.csv`, and a failure note.

`kdrun train -m` and `kdrun diffusion -m` jobs both add their rows here (sweep_row, diffusion_sweep_row).

Written from the task itself (not a Hydra callback) because the task is the one place that knows the
job's outcome under every launcher: sequential, joblib (other processes) and submitit (other machines).
Each job appends one JSON line under a file lock, then rewrites the CSV from all lines atomically, so
a job that crashes later cannot lose the rows of the others.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

from filelock import FileLock

from kdrun.files import append_line, write_bytes_atomic
from kdrun.results import PHASES, RunSummary

FAILURES_ENV = "KDRUN_SWEEP_FAILURES"  # a file the parent process reads after the sweep: one line per failed job
PHASE_COLUMNS = ("source", "test_acc", "best_val_acc")  # per phase, in sweep.csv and report.csv
COLUMNS = [
    "job", "status", "overrides", "method", "T", "alpha", "seed",
    *[f"{phase}_{field}" for phase in PHASES for field in PHASE_COLUMNS],
    "gap_recovered", "error", "run_dir",
]


def sweep_row(job: int, summary: RunSummary, settings: dict[str, Any]) -> dict[str, Any]:
    """One flat row per job: the numbers a sweep is compared on, and where the run is."""
    row: dict[str, Any] = {
        "job": job,
        "status": summary.status,
        "overrides": " ".join(summary.overrides),
        **settings,
        "gap_recovered": summary.gap_recovered,
        "error": summary.error or "",
        "run_dir": summary.run_dir,
    }
    for phase in PHASES:
        result = summary.phases.get(phase)
        for field in PHASE_COLUMNS:
            row[f"{phase}_{field}"] = getattr(result, field) if result is not None else None
    return row


def append_sweep_row(sweep_dir: Path, row: dict[str, Any], head: Sequence[str] = COLUMNS) -> None:
    """Append to sweep.jsonl and regenerate sweep.csv from it, both under the sweep's lock.

    The CSV's columns are `head`, then any other key of the rows in the order first seen (a diffusion
    sweep's jobs may have different step counts, hence different FID columns).
    """
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(sweep_dir / ".sweep.lock")):
        lines_path = sweep_dir / "sweep.jsonl"
        append_line(lines_path, json.dumps(row))
        rows = [json.loads(line) for line in lines_path.read_text().splitlines() if line.strip()]
        rows.sort(key=lambda item: item["job"])
        text = io.StringIO()
        columns = list(dict.fromkeys([*head, *(key for item in rows for key in item)]))
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        write_bytes_atomic(sweep_dir / "sweep.csv", text.getvalue().encode())


def note_failure(line: str) -> None:
    """Tell the parent `kdrun train -m` that a job failed (it exits non-zero when the sweep ends)."""
    target = os.environ.get(FAILURES_ENV)
    if target:
        with FileLock(target + ".lock"), open(target, "a", encoding="utf-8") as stream:
            stream.write(" ".join(line.split()) + "\n")


DIFFUSION_COLUMNS = ["job", "status", "overrides", "seed", "error", "run_dir"]  # then teacher/distilled FID per step count


def diffusion_sweep_row(job: int, seed: int, overrides: list[str], run_dir: Path, summary: Any = None,
                        error: str = "") -> dict[str, Any]:
    """One diffusion job: FID of the teacher's DDIM and of the distilled sampler at every step count."""
    if summary is not None:
        status, error = summary.status, error or summary.error or ""
    else:
        status = "failed"
    row: dict[str, Any] = {"job": job, "status": status, "overrides": " ".join(overrides), "seed": seed, "error": error,
                           "run_dir": str(run_dir)}
    for step_row in summary.rows if summary is not None else []:
        row[f"teacher_fid_{step_row.steps}"] = step_row.teacher_fid
        row[f"distilled_fid_{step_row.steps}"] = step_row.distilled_fid
    return row

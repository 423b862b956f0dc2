"""Experiment trackers beside TensorBoard: `track=[mlflow]`, `track=[wandb]` (docs/tracking.md).

Backends register by name in TRACKERS (mlflow_log.py, wandb_log.py); `open_trackers` builds the
configured ones before training (a missing package is a config error then, not after an hour) and
`finish_trackers` closes them with the run's summary.json, whatever way the run ended.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

from kdrun.errors import ConfigError
from kdrun.files import write_json_atomic
from kdrun.results import RunSummary
from kdrun.tracking import mlflow_log, wandb_log  # noqa: F401 - registers the backends
from kdrun.tracking.base import TRACKERS, TrackedRun, Tracker

IDS_FILE = "tracking.json"  # backend -> run id, so `kdrun resume` continues the same tracking run
DEFAULT_EXPERIMENT = "kdrun"


def experiment_name(configured: Optional[str], sweep_dir: Optional[Path]) -> str:
    """`tracking.experiment`, else one experiment per sweep (kdrun/<date>/<time>), else 'kdrun'."""
    if configured:
        return str(configured)
    return DEFAULT_EXPERIMENT if sweep_dir is None else "/".join([DEFAULT_EXPERIMENT, *sweep_dir.parts[-2:]])


def open_trackers(names: list[str], options: dict[str, Any], params: dict[str, Any], run_dir: Path,
                  sweep_dir: Optional[Path] = None, resume: bool = False) -> list[Tracker]:
    """The configured trackers, not yet started (each opens its backend run at the first event)."""
    if len(set(names)) != len(names):
        raise ConfigError(f"track={names} lists a backend twice", "list each once, e.g. track=[mlflow,wandb]")
    experiment = experiment_name(options.get("experiment"), sweep_dir)
    ids = known_ids(run_dir) if resume else {}
    trackers = []
    for name in names:
        tracker = TRACKERS.build(name, TrackedRun(run_dir, experiment, params, dict(options.get(name) or {}), ids.get(name)))
        tracker.started = lambda run_id, backend=name: remember_id(run_dir, backend, run_id)
        trackers.append(tracker)
    return trackers


def finish_trackers(trackers: Sequence[Tracker], summary: Optional[RunSummary]) -> None:
    """Close every tracker with the run's summary (None: the run never started)."""
    for tracker in trackers:
        tracker.finish(summary)


def known_ids(run_dir: Path) -> dict[str, str]:
    path = run_dir / IDS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def remember_id(run_dir: Path, backend: str, run_id: str) -> None:
    write_json_atomic(run_dir / IDS_FILE, {**known_ids(run_dir), backend: run_id})

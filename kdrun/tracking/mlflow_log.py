"""MLflow: `track=[mlflow]` files each run under one experiment (a sweep: one experiment, a run per job).

Written with MlflowClient (no fluent global "active run"), so several kdrun runs in one process (a
sequential sweep, a notebook loop) never log into each other. `tracking.mlflow.uri` is a directory
by default: MLflow's local file store, viewable with `mlflow ui --backend-store-uri <dir>`. MLflow
3.7+ keeps that store in maintenance mode and refuses it unless MLFLOW_ALLOW_FILE_STORE=true; kdrun
sets that for its own process when the URI is a plain directory. sqlite:/// and http(s):// URIs pass
through unchanged. Creating the experiment is serialised by a file lock: parallel sweep jobs
(joblib) would otherwise race to create it twice.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from filelock import FileLock

from kdrun.results import RunSummary
from kdrun.tracking.base import STATUS, TRACKERS, TrackedRun, Tracker, flat_params, now_ms, require, run_files, summary_metrics

MLFLOW_STATUS = {0: "FINISHED", 1: "FAILED", 130: "KILLED"}


def store_uri(uri: str) -> tuple[str, Path | None]:
    """(the URI MLflow gets, the local store directory if it is one)."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", uri) and not re.match(r"^[A-Za-z]:[\\/]", uri):  # a scheme, not C:\
        return uri, (Path(uri[len("file://"):]) if uri.startswith("file://") else None)
    directory = Path(uri).expanduser().resolve()
    return directory.as_uri(), directory


@TRACKERS.register("mlflow")
class MlflowLog(Tracker):
    backend = "mlflow"

    def __init__(self, run: TrackedRun) -> None:
        super().__init__(run)
        require("mlflow")
        self.uri, self.directory = store_uri(str(run.options.get("uri") or "outputs/mlruns"))
        self.client: Any = None

    def start(self) -> str:
        from mlflow.tracking import MlflowClient

        if self.directory is not None:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            self.directory.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        if self.run.resume_id:
            self.client.update_run(self.run.resume_id, status="RUNNING")
            return self.run.resume_id
        run = self.client.create_run(self.experiment_id(), run_name=self.run.name, tags={"kdrun.run_dir": str(self.run.run_dir)})
        self.log_params(run.info.run_id)
        return run.info.run_id

    def experiment_id(self) -> str:
        lock = FileLock(str(self.directory / ".kdrun-experiments.lock")) if self.directory is not None else None
        if lock is not None:
            lock.acquire()
        try:
            existing = self.client.get_experiment_by_name(self.run.experiment)
            return existing.experiment_id if existing is not None else self.client.create_experiment(self.run.experiment)
        finally:
            if lock is not None:
                lock.release()

    def log_params(self, run_id: str) -> None:
        from mlflow.entities import Param

        params = [Param(key, value) for key, value in flat_params(self.run.params).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=params[start:start + 100])

    def log_epoch(self, phase: str, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = now_ms()
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, stamp, epoch) for key, value in metrics.items()])

    def finish_run(self, summary: RunSummary) -> None:
        from mlflow.entities import Metric, RunTag

        stamp = now_ms()
        metrics = [Metric(key, value, stamp, 0) for key, value in summary_metrics(summary).items()]
        tags = [RunTag("kdrun.status", summary.status), *([RunTag("kdrun.error", summary.error[:5000])] if summary.error else [])]
        for start in range(0, max(len(metrics), 1), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000], tags=tags if start == 0 else [])
        files, folders = run_files(self.run.run_dir)
        for path in files:
            self.client.log_artifact(self.run_id, str(path))
        for folder in folders:
            self.client.log_artifacts(self.run_id, str(folder), artifact_path=folder.name)
        self.client.set_terminated(self.run_id, MLFLOW_STATUS[STATUS.get(summary.status, 1)])

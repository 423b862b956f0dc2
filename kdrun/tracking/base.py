"""What every experiment tracker does, once: when to open its run, what to log, and what a failure costs.

A tracker is a PhaseObserver (per-epoch metrics, one series per phase) that also sees the run's
parameters and, at the end, its summary.json and files. It opens its backend run lazily, at the first
event: a config error found before training creates no tracking run, just as it leaves no run dir.
A backend that fails mid-run (a tracking server going away) is reported once and switched off: the
run's own files are the record, and a training run is never lost to its logger.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from kdrun.errors import ConfigError, exception_line
from kdrun.registry import Registry
from kdrun.results import EpochRecord, RunSummary

log = logging.getLogger("kdrun")

TRACKERS: Registry = Registry("tracking backend")
RUN_FILES = ("summary.json", "metrics.jsonl", "train.log")  # plus the weight files and .hydra/, export/
FOLDERS = (".hydra", "export")
STATUS = {"completed": 0, "failed": 1, "interrupted": 130}  # exit codes, as the CLI's


@dataclass
class TrackedRun:
    """Where a backend files a run and what it is: the experiment (one per sweep), its name and parameters."""

    run_dir: Path
    experiment: str
    params: dict[str, Any]  # the resolved config, nested
    options: dict[str, Any] = field(default_factory=dict)  # the backend's node under `tracking`
    resume_id: Optional[str] = None  # the backend's run id when this run is resumed

    @property
    def name(self) -> str:
        return self.run_dir.name


class Tracker:
    """Base class: lazy start, guarded calls; backends implement start/log_epoch/define_phase/finish_run."""

    backend = ""

    def __init__(self, run: TrackedRun) -> None:
        self.run = run
        self.run_id: Optional[str] = None
        self.enabled = True
        self.started: Callable[[str], None] = lambda run_id: None  # told the run id once the backend run is open

    # -- PhaseObserver ------------------------------------------------------------------------------
    def phase_started(self, phase: str, epochs: int, steps_per_epoch: int) -> None:
        self.guarded(self.define_phase, phase)

    def step_done(self, phase: str) -> None:
        pass

    def epoch_done(self, record: EpochRecord) -> None:
        self.guarded(self.log_epoch, record.phase, record.epoch, epoch_metrics(record))

    def phase_done(self, phase: str) -> None:
        pass

    # -- end of the run -----------------------------------------------------------------------------
    def finish(self, summary: Optional[RunSummary]) -> None:
        """Log the summary and the files, close the run with the run's status; no summary: the run never started."""
        if summary is None and self.run_id is None:
            return
        self.guarded(self.finish_run, summary or RunSummary("failed", str(self.run.run_dir), None, [], {}))

    # -- helpers ------------------------------------------------------------------------------------
    def guarded(self, call: Callable[..., None], *arguments: Any) -> None:
        """Open the backend run if needed, then call; the first failure switches this tracker off."""
        if not self.enabled:
            return
        try:
            if self.run_id is None:
                self.run_id = self.start()
                self.started(self.run_id)
                log.info("%s: run %s in experiment '%s'", self.backend, self.run_id, self.run.experiment)
            call(*arguments)
        except Exception as error:  # noqa: BLE001 - a tracking backend's failure must not cost the training run
            self.enabled = False
            log.warning("%s: logging stopped (%s); the run's own files are complete", self.backend, exception_line(error))

    def start(self) -> str:
        raise NotImplementedError

    def define_phase(self, phase: str) -> None:
        pass

    def log_epoch(self, phase: str, epoch: int, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def finish_run(self, summary: RunSummary) -> None:
        raise NotImplementedError


def require(package: str) -> None:
    """A backend's package must be installed before training starts, not found missing after an hour."""
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"track=[{package}] needs the {package} package, which is not installed", f"pip install 'kdrun[{package}]'")


def epoch_metrics(record: EpochRecord) -> dict[str, float]:
    """One epoch's numbers under `<phase>/...`: each loss term, accuracies, lr, T, speed, time."""
    metrics = {f"{record.phase}/loss/{name}": value for name, value in record.loss.items()}
    metrics.update({f"{record.phase}/{key}": getattr(record, key) for key in ("train_acc", "val_acc", "lr", "samples_per_s", "seconds")})
    if record.T is not None:
        metrics[f"{record.phase}/T"] = record.T
    return metrics


def summary_metrics(summary: RunSummary) -> dict[str, float]:
    """Every number of summary.json's phases and exports, as `summary/<phase>/<field>` (apart from the
    per-epoch series: `<phase>/seconds` is an epoch's time, `summary/<phase>/seconds` the phase's)."""
    written = summary.to_json()
    metrics = dict(numeric_leaves(written["phases"], "summary/"))
    metrics.update(numeric_leaves(written.get("export", {}), "summary/export/"))
    if summary.gap_recovered is not None:
        metrics["summary/gap_recovered"] = float(summary.gap_recovered)
    return metrics


def numeric_leaves(node: Any, prefix: str) -> list[tuple[str, float]]:
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in numeric_leaves(value, f"{prefix}{key}/")]
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return [(prefix.rstrip("/"), float(node))]
    return []


def flat_params(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`teacher.hidden` -> '[1200, 1200]': the nested config as dotted keys, values as text (for MLflow's params)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:500]  # MLflow servers before 3.0 reject longer values
    return flat


def run_files(run_dir: Path) -> tuple[list[Path], list[Path]]:
    """The files (summary, metrics, log, student weights) and folders (.hydra, export) a tracker uploads."""
    files = [run_dir / name for name in RUN_FILES if (run_dir / name).is_file()]
    files += sorted(path for pattern in ("*.safetensors", "*.pt") for path in run_dir.glob(pattern))
    return files, [run_dir / name for name in FOLDERS if (run_dir / name).is_dir()]


def now_ms() -> int:
    return int(time.time() * 1000)

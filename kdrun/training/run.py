"""One run in its directory: from an empty run dir to summary.json, however the run ends.

`execute` is what `kdrun train` and `kdrun.run` call for every run (and every job of a sweep): it
sets the CPU threads, refuses a directory that already holds a run, attaches the observers
(metrics.jsonl, the display, TensorBoard, the experiment trackers), runs the pipeline and writes
summary.json: `completed`, `failed` with the error, or `interrupted`; the trackers close with it.
Bad input found before anything was trained leaves no directory behind (and no tracking run).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional, Sequence

from kdrun.errors import ConfigError, Interrupted, KdrunError
from kdrun.results import PHASES, RunProgress, RunSummary
from kdrun.run_dir import discard_if_empty, ensure_fresh, finish, now
from kdrun.tracking import Tracker, finish_trackers, open_trackers
from kdrun.training.device import configure_threads
from kdrun.training.loop import PhaseObserver
from kdrun.training.pipeline import run_pipeline
from kdrun.training.resume import mark_trained_here, remove_checkpoints
from kdrun.training.run_files import MetricsLog, Observers
from kdrun.training.settings import RunSettings
from kdrun.training.tensorboard_log import TensorBoardLog, wants_tensorboard

log = logging.getLogger("kdrun")


def execute(settings: RunSettings, run_dir: Path, overrides: list[str], display: PhaseObserver, jobs_at_once: int = 1,
            sweep_dir: Optional[Path] = None) -> RunSummary:
    """Run the pipeline in `run_dir`; returns the completed run's summary. `sweep_dir`: the sweep it is a job of.

    Raises:
        ConfigError: bad input (the run dir is removed if nothing was produced yet).
        RunError: the run failed (summary.json says `failed`). Interrupted: Ctrl-C (summary says `interrupted`).
    """
    try:
        threads = configure_threads(settings.trainer.threads, jobs_at_once)
        if jobs_at_once > 1 or str(settings.trainer.threads) != "auto":  # only news when kdrun changed torch's default
            log.info("CPU threads: %d (%d job(s) at once)", threads, jobs_at_once)
        ensure_fresh(run_dir, settings.resume)
        tracking = settings.tracking
        trackers = open_trackers(tracking.backends, tracking.options, tracking.params, run_dir, sweep_dir, settings.resume)
        observer = observers(settings, run_dir, display, trackers)
    except ConfigError:
        discard_if_empty(run_dir)  # bad input: leave nothing behind that looks like a run
        raise
    progress, started = RunProgress(), now()
    ending: list[RunSummary] = []  # summary.json as written, for the trackers

    def ended(status: str, error: str | None = None) -> RunSummary:
        mark_trained_here(progress.phases, run_dir)  # a resume loaded what this dir trained from the cache
        ending.append(finish(run_dir, progress, settings.seed, overrides, started, status, error))
        return ending[-1]

    try:
        summary = run_to_the_end(settings, run_dir, observer, progress, ended)
    finally:  # MLflow / W&B runs end with the run's summary, however the run ended (none: it never started)
        finish_trackers(trackers, ending[-1] if ending else None)
    remove_checkpoints(run_dir)  # a completed run is not resumed
    return summary


def run_to_the_end(settings: RunSettings, run_dir: Path, observer: PhaseObserver, progress: RunProgress,
                   ended: Callable[..., RunSummary]) -> RunSummary:
    """The pipeline, and summary.json however it ends: completed, failed (with the error) or interrupted."""
    try:
        run_pipeline(settings, run_dir, observer, progress)
    except ConfigError as error:
        if not progress.phases:  # bad input found while loading (data root, checkpoint): nothing to keep
            discard_if_empty(run_dir)
            raise
        ended("failed", error.one_line())
        raise
    except KdrunError as error:
        ended("failed", error.one_line())
        raise
    except KeyboardInterrupt:
        ended("interrupted", "interrupted by the user (Ctrl-C)")
        raise Interrupted(f"interrupted; continue from its last checkpoint with: kdrun resume {run_dir}") from None
    return ended("completed")


def observers(settings: RunSettings, run_dir: Path, display: PhaseObserver, trackers: Sequence[Tracker] = ()) -> Observers:
    """metrics.jsonl (with the per-epoch log line), the display, TensorBoard event files when wanted, the trackers."""
    epochs = dict(zip(PHASES, (settings.teacher_epochs, settings.student_epochs, settings.student_epochs)))
    chosen: list[PhaseObserver] = [MetricsLog(run_dir / "metrics.jsonl", epochs), display]
    if wants_tensorboard(settings.trainer.tensorboard):
        chosen.append(TensorBoardLog(run_dir / "tensorboard"))
    return Observers([*chosen, *trackers])

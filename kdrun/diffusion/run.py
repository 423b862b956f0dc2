"""One `kdrun diffusion` run in its directory: from an empty run dir to summary.json, however the run ends.

The diffusion counterpart of kdrun/training/run.py: it validates the config, sets the CPU threads,
refuses a directory that already holds a run (or, on resume, one that holds nothing to resume),
runs the pipeline and writes summary.json (`completed`, `failed` with the error, or `interrupted`)
with the run's figures. Bad input found before anything was trained leaves no directory behind.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from kdrun import __version__
from kdrun.diffusion.config import validate
from kdrun.diffusion.pipeline import DiffusionRun
from kdrun.diffusion_results import DiffusionSummary, rows_from
from kdrun.errors import ConfigError, Interrupted, KdrunError
from kdrun.files import remove
from kdrun.report.diffusion import write_run_figures
from kdrun.results import SUMMARY_FILE, read_summary, write_summary
from kdrun.run_dir import discard_if_empty, ensure_fresh, now
from kdrun.training.device import configure_threads


def execute(cfg: DictConfig, run_dir: Path, overrides: list[str], display: Any, jobs_at_once: int = 1) -> DiffusionSummary:
    """Run the progressive distillation in `run_dir`; returns the completed run's summary.

    Raises:
        ConfigError: bad input (the run dir is removed if nothing was produced yet).
        RunError: the run failed (summary.json says `failed`). Interrupted: Ctrl-C (summary says `interrupted`).
    """
    try:
        steps = validate(cfg)
        configure_threads(cfg.trainer.threads, jobs_at_once)
        check_run_dir(run_dir, bool(cfg.resume))
        run = DiffusionRun(cfg, run_dir, display, steps)
    except ConfigError:
        discard_if_empty(run_dir)
        raise
    started = now()
    try:
        run.execute()
    except ConfigError as error:
        if not run.teacher:  # bad input found while loading (data, checkpoint): nothing to keep
            discard_if_empty(run_dir)
            raise
        finish(run, overrides, started, "failed", error.one_line())
        raise
    except KdrunError as error:
        finish(run, overrides, started, "failed", error.one_line())
        raise
    except KeyboardInterrupt:
        finish(run, overrides, started, "interrupted", "interrupted by the user (Ctrl-C)")
        raise Interrupted(f"interrupted; continue from its last checkpoint with: kdrun resume {run_dir}") from None
    return finish(run, overrides, started, "completed")


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A new run needs a fresh dir; a resume needs an unfinished earlier run there."""
    ensure_fresh(run_dir, resume)
    if not resume:
        return
    summary = run_dir / SUMMARY_FILE
    if summary.is_file() and read_summary(summary).status == "completed":
        raise ConfigError(f"the run in {run_dir} already completed", "nothing to resume; start a new run in another hydra.run.dir")
    if not (run_dir / "metrics.jsonl").is_file() and not (run_dir / "checkpoints").is_dir():
        raise ConfigError(f"nothing to resume in {run_dir}: no earlier run there",
                          "pass the dir of an interrupted run: kdrun resume DIR, or hydra.run.dir=DIR resume=true")
    remove(summary)  # it appears again when this attempt ends


def finish(run: DiffusionRun, overrides: list[str], started: datetime.datetime, status: str,
           error: Optional[str] = None) -> DiffusionSummary:
    """summary.json, written last and atomically (kdrun/results.py); also the FID-vs-steps plot and the samples overview."""
    data = run.data
    summary = DiffusionSummary(
        status=status, error=error, run_dir=str(run.run_dir), seed=run.cfg.seed, overrides=overrides, device=str(run.device),
        dataset={"name": run.cfg.dataset.name, **({"train": len(data.train), "test": len(data.test)} if data else {})},
        teacher=run.teacher, fid=run.fid, rounds=run.events.rounds(), rows=rows_from(run.steps, run.events.all_evaluations()),
        started=started.isoformat(timespec="seconds"), finished=now().isoformat(timespec="seconds"),
        versions={"kdrun": __version__, "torch": torch.__version__},
    )
    summary.plot = write_run_figures(summary, run.run_dir)
    write_summary(run.run_dir, summary)
    return summary

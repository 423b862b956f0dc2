"""`kdrun train`: compose the config with Hydra, run it in its run dir, print the table, return the metric.

The run itself: kdrun/training/from_config.py (config -> settings), kdrun/training/run.py (the run
dir, start to summary.json), kdrun/training/pipeline.py (teacher -> independent -> distilled -> stages).
Errors are raised, not printed: kdrun/cli.py turns them into one line. The one exception is a job of
a sweep, which records its own failure and returns, so that the other jobs still run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from kdrun.commands.hydra_app import application, flags_first, hydra_errors, open_group_overrides, render_help, wants_help
from kdrun.errors import ConfigError, Interrupted, KdrunError, RunError, tracebacks_requested


def main(arguments: list[str]) -> None:
    """Hand the arguments to the Hydra app (kdrun renders `--help` itself: Hydra's takes seconds)."""
    from kdrun.commands.distributed_run import hydra_overrides, torchrun_session
    from kdrun.sweep_files import FAILURES_ENV

    multirun = "-m" in arguments or "--multirun" in arguments
    arguments = open_group_overrides(arguments)  # teacher=custom teacher.depth=3: the model's own keys, typed plainly
    with hydra_errors(multirun):
        if wants_help(arguments):
            print(render_help(arguments))
            return
        app = application(task)
        sys.argv = ["kdrun train", *flags_first(arguments), *hydra_overrides()]
        with failures_file(FAILURES_ENV) as failures, torchrun_session():  # torchrun: the process group (docs/distributed.md)
            app()
            failed = failures.read_text().splitlines()
    if failed:  # multirun: the other jobs ran; the sweep as a whole did not complete
        raise RunError(f"{len(failed)} job(s) of the sweep failed, the others completed: {failed[0]}", "see sweep.csv in the sweep dir")


@dataclass
class Job:
    """Where Hydra put this run, and how: its overrides, and its place in a sweep."""

    run_dir: Path
    overrides: list[str]
    multirun: bool
    jobs_at_once: int = 1  # joblib runs several jobs at once: they share the cores
    sweep_dir: Optional[Path] = None
    number: int = 0


def current_job() -> Job:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from kdrun.training.device import parallel_jobs

    hydra = HydraConfig.get()
    job = Job(Path(hydra.runtime.output_dir).resolve(), list(hydra.overrides.task), hydra.mode == RunMode.MULTIRUN)
    if job.multirun:
        job.jobs_at_once, job.sweep_dir, job.number = parallel_jobs(hydra.launcher), Path(hydra.sweep.dir).resolve(), int(hydra.job.num)
    return job


def task(cfg: Any) -> float:
    """The Hydra task: one run in its own directory. Returns the distilled student's best validation
    accuracy (what Optuna's sweeper maximises; NaN = failed)."""
    from kdrun import parallel
    from kdrun.commands.distributed_run import agree_on_run_dir, run_other_rank

    job = current_job()
    if parallel.is_active():  # torchrun: rank 0's run dir for all; the other ranks train silently
        job.run_dir = agree_on_run_dir(job.run_dir, job.multirun)
        if not parallel.is_main():
            return run_other_rank(cfg, job.run_dir)
    try:
        summary = run_and_show(cfg, job)
    except KdrunError as error:
        if not job.multirun or isinstance(error, Interrupted) or tracebacks_requested():
            raise
        summary = failed_job_summary(cfg, job, error)  # a sweep goes on; `main` exits 1 at the end
    if job.multirun:
        from kdrun.sweep_files import append_sweep_row, sweep_row

        settings = {"method": cfg.method.name, "T": cfg.T, "alpha": cfg.alpha, "seed": cfg.seed}
        append_sweep_row(job.sweep_dir, sweep_row(job.number, summary, settings))
    distilled = summary.phases.get("distilled")
    return float(distilled.best_val_acc) if distilled is not None else float("nan")


def run_and_show(cfg: Any, job: Job) -> Any:
    """Settings from the config, the run in its dir (logged to train.log), then the table on stdout."""
    from rich.console import Console

    from kdrun.display import ConsoleLogHandler, ProgressDisplay, print_results
    from kdrun.run_dir import RunLogging, discard_if_empty
    from kdrun.training.from_config import settings_from_config
    from kdrun.training.run import execute

    console = Console(stderr=True)
    with RunLogging(job.run_dir, ConsoleLogHandler(console)) as logs:
        try:
            settings = settings_from_config(cfg)
        except ConfigError:
            discard_if_empty(job.run_dir)  # bad input: leave nothing behind that looks like a run
            raise
        display = ProgressDisplay(console, settings.trainer.progress)
        summary = execute(settings, job.run_dir, job.overrides, display, job.jobs_at_once, job.sweep_dir)
        stdout = console_stdout()
        print_results(summary, job.run_dir, stdout, logs.file_log)
        stdout.print(f"report: kdrun report {job.run_dir}", soft_wrap=True, markup=False, highlight=False)
    return summary


def failed_job_summary(cfg: Any, job: Job, error: KdrunError) -> Any:
    """A failed multirun job: say so on stderr, and make sure its run dir holds a failed summary.json."""
    from kdrun.results import SUMMARY_FILE, RunSummary, read_summary, write_summary
    from kdrun.sweep_files import note_failure

    line = f"job {job.run_dir.name} failed: {error.one_line()}"
    sys.stderr.write("kdrun: error: " + line + "\n")
    note_failure(line)
    if (job.run_dir / SUMMARY_FILE).is_file():
        return read_summary(job.run_dir)
    summary = RunSummary("failed", str(job.run_dir), cfg.seed, job.overrides, {}, error=error.one_line())
    write_summary(job.run_dir, summary)  # also when the error came before training: the sweep shows every job
    return summary


@contextlib.contextmanager
def failures_file(variable: str) -> Iterator[Path]:
    """A temp file that multirun jobs (in this process or in joblib workers) append their failures to."""
    handle, name = tempfile.mkstemp(prefix="kdrun-failures-", suffix=".txt")
    os.close(handle)
    os.environ[variable] = name
    try:
        yield Path(name)
    finally:
        os.environ.pop(variable, None)
        for path in (name, name + ".lock"):
            Path(path).unlink(missing_ok=True)


def console_stdout() -> Any:
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=130)  # logs and pipes: don't squeeze to 80 (130: room for compression columns)

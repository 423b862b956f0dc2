"""`kdrun diffusion`: compose conf/diffusion.yaml with Hydra, run it in its run dir, print the table.

The run itself: kdrun/diffusion/run.py (the run dir, start to summary.json) and
kdrun/diffusion/pipeline.py (teacher -> rounds -> evaluations). Same conventions as `kdrun train`
(kdrun/commands/hydra_app.py): errors are raised, and kdrun/cli.py turns them into one line; the one
exception is a job of a sweep, which records its own failure and returns so that the others still run.
Nothing here imports torch: `kdrun diffusion --help` and `--cfg job` answer without it.
"""

from __future__ import annotations

import sys
from typing import Any

from kdrun.commands.hydra_app import HydraCommand, application, flags_first, hydra_errors, render_help, wants_help
from kdrun.diffusion.config import register_schema
from kdrun.errors import Interrupted, KdrunError, RunError, tracebacks_requested

DIFFUSION = HydraCommand("diffusion", "diffusion", register_schema)


def main(arguments: list[str]) -> None:
    """Hand the arguments to the Hydra app (kdrun renders `--help` itself: Hydra's takes seconds)."""
    from kdrun.commands.train import failures_file
    from kdrun.sweep_files import FAILURES_ENV

    multirun = "-m" in arguments or "--multirun" in arguments
    with hydra_errors(multirun, DIFFUSION):
        if wants_help(arguments):
            print(render_help(arguments, DIFFUSION))
            return
        app = application(task, DIFFUSION)
        sys.argv = ["kdrun diffusion", *flags_first(arguments)]
        with failures_file(FAILURES_ENV) as failures:
            app()
            failed = failures.read_text().splitlines()
    if failed:  # multirun: the other jobs ran; the sweep as a whole did not complete
        raise RunError(f"{len(failed)} job(s) of the sweep failed, the others completed: {failed[0]}", "see each job's train.log")


def task(cfg: Any) -> float:
    """The Hydra task: one run in its own directory. Returns the last row's distilled FID (NaN = failed)."""
    from kdrun.commands.train import current_job
    from kdrun.sweep_files import DIFFUSION_COLUMNS, append_sweep_row, diffusion_sweep_row, note_failure

    job = current_job()
    try:
        summary = run_and_show(cfg, job)
    except KdrunError as error:
        if not job.multirun or isinstance(error, Interrupted) or tracebacks_requested():
            raise
        line = f"job {job.run_dir.name} failed: {error.one_line()}"
        sys.stderr.write("kdrun: error: " + line + "\n")
        note_failure(line)
        append_sweep_row(job.sweep_dir, diffusion_sweep_row(job.number, cfg.seed, job.overrides, job.run_dir, error=error.one_line()),
                         DIFFUSION_COLUMNS)
        return float("nan")
    if job.multirun:
        append_sweep_row(job.sweep_dir, diffusion_sweep_row(job.number, cfg.seed, job.overrides, job.run_dir, summary), DIFFUSION_COLUMNS)
    last = summary.rows[-1].distilled_fid if summary.rows else None
    return float("nan") if last is None else float(last)


def run_and_show(cfg: Any, job: Any) -> Any:
    """The run in its dir (logged to train.log), then the table on stdout."""
    from rich.console import Console

    from kdrun.commands.train import console_stdout
    from kdrun.diffusion.run import execute
    from kdrun.display import ConsoleLogHandler, ProgressDisplay
    from kdrun.report.diffusion import print_run_table
    from kdrun.run_dir import RunLogging

    console = Console(stderr=True)
    with RunLogging(job.run_dir, ConsoleLogHandler(console)) as logs:
        summary = execute(cfg, job.run_dir, job.overrides, ProgressDisplay(console, cfg.trainer.progress), job.jobs_at_once)
        print_run_table(summary, job.run_dir, console_stdout(), logs.file_log)
    return summary

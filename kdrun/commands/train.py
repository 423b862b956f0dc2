"""`kdrun train`: compose the config with Hydra, run the pipeline, write the summary, print the table."""

from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from kdrun import __version__
from kdrun.cli import describe_config_error, fail, flags_first, full_errors_requested
from kdrun.config import config_dir, open_group_overrides, prepare_hydra
from kdrun.errors import ConfigError, KdrunError

RUN_RESULT_FILES = ("summary.json", "metrics.jsonl")
UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR}  # bad input (exit 2), unlike a full disk
SCAFFOLDING = {".hydra", "train.log", "metrics.jsonl"}  # what a run writes before any phase completes


def main(arguments: list[str]) -> None:
    """Hand the arguments to the Hydra app; composition errors become one-line `kdrun: error:`s."""
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if "KDRUN_USER_HYDRA_FULL_ERROR" not in os.environ:
        os.environ["KDRUN_USER_HYDRA_FULL_ERROR"] = os.environ.get("HYDRA_FULL_ERROR", "")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra's errors reach us instead of printing them itself
    prepare_hydra()
    app = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(task)
    from kdrun.commands.distributed_run import hydra_overrides, session

    sys.argv = ["kdrun train", *flags_first(open_group_overrides(arguments)), *hydra_overrides()]
    with failures_file() as failures, session():  # torchrun: the process group (docs/distributed.md)
        try:
            app()
        except (HydraException, OmegaConfBaseException) as error:
            if full_errors_requested():
                raise
            fail(describe_config_error(error, multirun="-m" in arguments or "--multirun" in arguments), 2)
        except OSError as error:  # e.g. Hydra creating an unwritable hydra.run.dir, or a full disk
            if full_errors_requested():
                raise
            fail(describe_os_error(error), 2 if error.errno in UNWRITABLE else 1)
        failed = failures.read_text().splitlines()
    if failed:  # multirun: the other jobs ran; the sweep as a whole did not complete
        fail(f"{len(failed)} job(s) of the sweep failed, the others completed: {failed[0]} (see sweep.csv in the sweep dir)", 1)


@contextlib.contextmanager
def failures_file() -> Any:
    """A temp file that multirun jobs (in this process or in joblib workers) append their failures to."""
    from kdrun.training.sweep_files import FAILURES_ENV

    handle, name = tempfile.mkstemp(prefix="kdrun-failures-", suffix=".txt")
    os.close(handle)
    os.environ[FAILURES_ENV] = name
    try:
        yield Path(name)
    finally:
        os.environ.pop(FAILURES_ENV, None)
        for path in (name, name + ".lock"):
            Path(path).unlink(missing_ok=True)


def describe_os_error(error: OSError) -> str:
    """One line for a file system failure: which path, why, and what to change."""
    where = f" {error.filename}" if error.filename else ""
    hint = "free disk space" if error.errno == errno.ENOSPC else "pick a writable hydra.run.dir and cache_dir"
    return f"cannot write{where}: {error.strerror or error} ({hint})"


def task(cfg: Any) -> float:
    """The Hydra task: one run in its own directory. Exits non-zero (no traceback) on failure.

    In a multirun a failing job must not exit: Hydra's basic launcher would abort the remaining jobs.
    It records summary.json (status failed) and its sweep row instead; `main` exits 1 at the end.
    Returns the distilled student's best validation accuracy (what Optuna's sweeper maximises; NaN = failed).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from kdrun.commands.distributed_run import agree_on_run_dir, run_other_rank
    from kdrun.training import distributed
    from kdrun.training.device import parallel_jobs

    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir).resolve()
    overrides = list(hydra_config.overrides.task)
    multirun = hydra_config.mode == RunMode.MULTIRUN
    jobs_at_once = parallel_jobs(hydra_config.launcher) if multirun else 1
    if distributed.is_active():  # torchrun: rank 0's run dir for all; the other ranks train silently
        run_dir = agree_on_run_dir(run_dir, multirun)
        if not distributed.is_main():
            return run_other_rank(cfg, run_dir)
    with run_logging(run_dir, cfg.trainer.progress) as (console, file_log, display):
        try:
            sweep_dir = Path(hydra_config.sweep.dir).resolve() if multirun else None
            summary = execute(cfg, run_dir, overrides, console, file_log, display, jobs_at_once, sweep_dir)
        except KdrunError as error:
            if full_errors_requested():
                raise
            if not multirun:
                fail(error.one_line(), error.exit_code)
            summary = failed_job_summary(cfg, run_dir, overrides, error)
    if multirun:
        record_sweep_job(cfg, Path(hydra_config.sweep.dir).resolve(), int(hydra_config.job.num), summary)
    return float(summary.get("phases", {}).get("distilled", {}).get("best_val_acc", float("nan")))


def failed_job_summary(cfg: Any, run_dir: Path, overrides: list[str], error: KdrunError) -> dict:
    """A failed multirun job: say so on stderr, and make sure its run dir holds a failed summary.json."""
    import json

    from kdrun.files import write_json_atomic
    from kdrun.training.sweep_files import note_failure

    line = f"job {run_dir.name} failed: {error.one_line()}"
    sys.stderr.write("kdrun: error: " + line + "\n")
    note_failure(line)
    path = run_dir / "summary.json"
    if path.is_file():
        return json.loads(path.read_text())
    summary = {"status": "failed", "error": error.one_line(), "run_dir": str(run_dir), "seed": cfg.seed,
               "overrides": overrides, "phases": {}, "gap_recovered": None}
    write_json_atomic(path, summary)  # also when the error came before training: the sweep shows every job
    return summary


def record_sweep_job(cfg: Any, sweep_dir: Path, job: int, summary: dict) -> None:
    from kdrun.training.sweep_files import append_sweep_row, sweep_row

    settings = {"method": cfg.method.name, "T": cfg.T, "alpha": cfg.alpha, "seed": cfg.seed}
    append_sweep_row(sweep_dir, sweep_row(job, summary, settings))


def execute(
    cfg: Any, run_dir: Path, overrides: list[str], console: Any, file_log: Any, display: Any, jobs_at_once: int = 1,
    sweep_dir: Path | None = None,
) -> dict:
    from kdrun.config import validate
    from kdrun.tracking import finish_trackers, open_trackers
    from kdrun.training.from_config import plain
    from kdrun.training.device import configure_threads
    from kdrun.training.pipeline import Run
    from kdrun.training.resume import prepare_resume
    from kdrun.training.run_files import MetricsLog, Observers
    from kdrun.training.tensorboard_log import TensorBoardLog, wants_tensorboard

    try:
        validate(cfg)
        threads = configure_threads(cfg.trainer.threads, jobs_at_once)
        if jobs_at_once > 1 or str(cfg.trainer.threads) != "auto":  # only news when kdrun changed torch's default
            logging.getLogger("kdrun").info("CPU threads: %d (%d job(s) at once)", threads, jobs_at_once)
        ensure_fresh_run_dir(run_dir, cfg.resume)
        epochs = {"teacher": cfg.teacher_epochs, "independent": cfg.student_epochs, "distilled": cfg.student_epochs}
        observers = [MetricsLog(run_dir / "metrics.jsonl", epochs), display]
        if wants_tensorboard(cfg.trainer.tensorboard):
            observers.append(TensorBoardLog(run_dir / "tensorboard"))
        trackers = open_trackers(list(cfg.track), plain(cfg.tracking), plain(cfg), run_dir, sweep_dir, cfg.resume)
        run = Run(cfg, run_dir, Observers(observers + trackers))
        if cfg.resume:
            prepare_resume(cfg, run_dir)
    except ConfigError:
        discard_empty_run_dir(run_dir)  # bad input: leave nothing behind that looks like a run
        raise
    try:
        return run_to_the_end(run, run_dir, overrides, file_log)
    finally:  # MLflow / W&B runs end with the run's summary.json, however the run ended
        finish_trackers(trackers, run_dir)


def run_to_the_end(run: Any, run_dir: Path, overrides: list[str], file_log: Any) -> dict:
    """Execute the run; summary.json records how it ended (completed, failed, interrupted)."""
    from kdrun.display import print_results
    from kdrun.training.resume import remove_checkpoints

    started = datetime.datetime.now().astimezone()
    try:
        run.execute()
    except ConfigError:
        if not run.phases:  # bad input found while loading (data root, checkpoint): nothing to keep
            discard_empty_run_dir(run_dir)
            raise
        write_summary(run, overrides, started, "failed", sys.exc_info()[1].one_line())
        raise
    except KdrunError as error:
        write_summary(run, overrides, started, "failed", error.one_line())
        raise
    except KeyboardInterrupt:
        write_summary(run, overrides, started, "interrupted", "interrupted by the user (Ctrl-C)")
        fail(f"interrupted; continue from its last checkpoint with: kdrun resume {run_dir}", 130)
    summary = write_summary(run, overrides, started, "completed")
    remove_checkpoints(run_dir)  # a completed run is not resumed
    print_results(summary, run_dir, console_stdout(), file_log)
    console_stdout().print(f"report: kdrun report {run_dir}", soft_wrap=True, markup=False, highlight=False)
    return summary


def write_summary(run: Any, overrides: list[str], started: Any, status: str, error: str | None = None) -> dict:
    """summary.json, written last and atomically: its presence and `status` say how the run ended."""
    import torch

    from kdrun.files import write_json_atomic
    from kdrun.training.resume import mark_trained_here
    from kdrun.training.run_files import gap_recovered

    mark_trained_here(run.phases, run.run_dir)
    data = run.data
    summary: dict[str, Any] = {
        "status": status,
        **({"error": error} if error else {}),
        "run_dir": str(run.run_dir),
        "device": str(run.device),
        "seed": run.cfg.seed,
        "overrides": overrides,
        "dataset": {
            "name": run.cfg.dataset.name,
            **(
                {"train": len(data.train), "val": len(data.val), "test": len(data.test), "classes": data.class_names}
                if data is not None
                else {}
            ),
        },
        "phases": run.phases,
        "gap_recovered": gap_recovered(run.phases),
        **({"export": run.exports} if run.exports else {}),
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "versions": {"kdrun": __version__, "torch": torch.__version__},
    }
    write_json_atomic(run.run_dir / "summary.json", summary)
    return summary


def ensure_fresh_run_dir(run_dir: Path, resume: bool) -> None:
    """Never mix two runs in one directory (nor overwrite a finished one)."""
    if resume:
        return  # resume.prepare_resume checks the run dir instead
    for name in RUN_RESULT_FILES:
        if (run_dir / name).exists():
            raise ConfigError(f"{run_dir} already holds a run ({name})", "pick another hydra.run.dir")


def discard_empty_run_dir(run_dir: Path) -> None:
    """Remove a run dir that holds only what Hydra and this process just put there."""
    leftovers = {path.name for path in run_dir.iterdir()} if run_dir.is_dir() else set()
    if leftovers <= SCAFFOLDING:
        logging.shutdown()
        shutil.rmtree(run_dir, ignore_errors=True)


def console_stdout() -> Any:
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=130)  # logs and pipes: don't squeeze to 80 (130: room for compression columns)


class run_logging:
    """Context: the `kdrun` logger prints through rich (stderr) and into <run_dir>/train.log."""

    def __init__(self, run_dir: Path, progress: bool) -> None:
        self.run_dir = run_dir
        self.progress = progress

    def __enter__(self) -> tuple[Any, logging.Logger, Any]:
        from rich.console import Console

        from kdrun.display import ConsoleLogHandler, ProgressDisplay

        self.run_dir.mkdir(parents=True, exist_ok=True)
        console = Console(stderr=True)
        self.file_handler = logging.FileHandler(self.run_dir / "train.log", encoding="utf-8")
        self.file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        self.console_handler = ConsoleLogHandler(console)
        self.logger = logging.getLogger("kdrun")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self.logger.addHandler(self.file_handler)
        self.logger.addHandler(self.console_handler)
        self.file_log = logging.getLogger("kdrun_file")  # train.log only (e.g. the plain-text table)
        self.file_log.setLevel(logging.INFO)
        self.file_log.propagate = False
        self.file_log.addHandler(self.file_handler)
        return console, self.file_log, ProgressDisplay(console, self.progress)

    def __exit__(self, *exc_info: Any) -> None:
        for logger in (self.logger, self.file_log):
            logger.removeHandler(self.file_handler)
        self.logger.removeHandler(self.console_handler)
        self.file_handler.close()

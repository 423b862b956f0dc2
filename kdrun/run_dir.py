"""A run directory's life: never two runs in one, no empty leftovers, train.log, summary.json written last.

Hydra creates the directory (`hydra.run.dir`, or a job's folder in a sweep); what happens in it is
the same for every command that trains: refuse a directory that already holds a run, log into
`train.log`, remove the directory again when bad input stopped the run before it produced anything,
and end with summary.json, whose `status` says how the run ended. No torch at import time.
"""

from __future__ import annotations

import datetime
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

from kdrun import __version__
from kdrun.errors import ConfigError
from kdrun.results import SUMMARY_FILE, RunProgress, RunSummary, write_summary

RUN_RESULT_FILES = (SUMMARY_FILE, "metrics.jsonl")
SCAFFOLDING = {".hydra", "train.log", "metrics.jsonl"}  # what a run writes before any phase completes


def ensure_fresh(run_dir: Path, resume: bool) -> None:
    """Never mix two runs in one directory (nor overwrite a finished one); a resume checks the dir itself."""
    if resume:
        return
    for name in RUN_RESULT_FILES:
        if (run_dir / name).exists():
            raise ConfigError(f"{run_dir} already holds a run ({name})", "pick another hydra.run.dir")


def discard_if_empty(run_dir: Path) -> None:
    """Remove a run dir that holds only what Hydra and this process just put there (bad input: no trace)."""
    if holds_only(run_dir, SCAFFOLDING):
        logging.shutdown()  # train.log's handler lets go of the file
        shutil.rmtree(run_dir, ignore_errors=True)


def discard_unstarted_sweep(sweep_dir: Path) -> None:
    """Remove a sweep dir that holds only the multirun.yaml Hydra's sweeper just wrote (bad input: no trace)."""
    if holds_only(sweep_dir, {"multirun.yaml"}):
        shutil.rmtree(sweep_dir, ignore_errors=True)


def holds_only(folder: Path, names: set[str]) -> bool:
    """True when every entry of the folder (if it exists) is one of `names`: nothing a user made is inside."""
    return not folder.is_dir() or {path.name for path in folder.iterdir()} <= names


def now() -> datetime.datetime:
    return datetime.datetime.now().astimezone()


def finish(run_dir: Path, progress: RunProgress, seed: Optional[int], overrides: list[str], started: datetime.datetime,
           status: str, error: Optional[str] = None) -> RunSummary:
    """Write summary.json from what the run got done; its presence and `status` say how the run ended."""
    import torch  # already loaded by the run; only its version is recorded

    summary = RunSummary(
        status, str(run_dir), seed, overrides, progress.phases, error=error, device=progress.device, dataset=progress.dataset,
        started=started.isoformat(timespec="seconds"), finished=now().isoformat(timespec="seconds"),
        versions={"kdrun": __version__, "torch": torch.__version__}, export=progress.export,
    )
    write_summary(run_dir, summary)
    return summary


class RunLogging:
    """Context: the `kdrun` logger prints through `console_handler` and into <run_dir>/train.log.

    `file_log` (the `kdrun_file` logger) writes into train.log only, e.g. the plain-text results table.
    """

    def __init__(self, run_dir: Path, console_handler: logging.Handler) -> None:
        self.run_dir = run_dir
        self.console_handler = console_handler
        self.logger = logging.getLogger("kdrun")
        self.file_log = logging.getLogger("kdrun_file")

    def __enter__(self) -> "RunLogging":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.file_handler = logging.FileHandler(self.run_dir / "train.log", encoding="utf-8")
        self.file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        for logger, handlers in ((self.logger, (self.file_handler, self.console_handler)), (self.file_log, (self.file_handler,))):
            logger.setLevel(logging.INFO)
            logger.propagate = False
            for handler in handlers:
                logger.addHandler(handler)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for logger in (self.logger, self.file_log):
            logger.removeHandler(self.file_handler)
        self.logger.removeHandler(self.console_handler)
        self.file_handler.close()

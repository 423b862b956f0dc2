"""`kdrun diffusion`: compose conf/diffusion.yaml with Hydra, run the progressive distillation, write
the summary, print the table. Same conventions as `kdrun train`: run dir, train.log, metrics.jsonl,
atomic summary.json, one-line errors, `resume=true` / `kdrun resume DIR`.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

from kdrun import __version__
from kdrun.cli import describe_config_error, fail, flags_first, full_errors_requested
from kdrun.commands.train import (UNWRITABLE, console_stdout, describe_os_error, discard_empty_run_dir, ensure_fresh_run_dir,
                                  failures_file, run_dir_suffix, run_logging)
from kdrun.config import config_dir
from kdrun.errors import ConfigError, KdrunError


def main(arguments: list[str]) -> None:
    """Hand the arguments to the Hydra app; composition errors become one-line `kdrun: error:`s."""
    import hydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from kdrun.diffusion.config import register_schema

    if "KDRUN_USER_HYDRA_FULL_ERROR" not in os.environ:
        os.environ["KDRUN_USER_HYDRA_FULL_ERROR"] = os.environ.get("HYDRA_FULL_ERROR", "")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    register_schema()
    if not OmegaConf.has_resolver("kdrun_suffix"):
        OmegaConf.register_new_resolver("kdrun_suffix", run_dir_suffix)
    app = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="diffusion")(task)
    sys.argv = ["kdrun diffusion", *flags_first(arguments)]
    multirun = "-m" in arguments or "--multirun" in arguments
    with failures_file() as failures:
        try:
            app()
        except (HydraException, OmegaConfBaseException) as error:
            if full_errors_requested():
                raise
            fail(describe_config_error(error, multirun).replace("kdrun train --cfg job", "kdrun diffusion --cfg job"), 2)
        except OSError as error:
            if full_errors_requested():
                raise
            fail(describe_os_error(error), 2 if error.errno in UNWRITABLE else 1)
        failed = failures.read_text().splitlines()
    if failed:
        fail(f"{len(failed)} job(s) of the sweep failed, the others completed: {failed[0]}", 1)


def task(cfg: Any) -> float:
    """One run in its own directory; exits non-zero (no traceback) on failure, except inside a multirun
    (which records the failure and carries on with the other jobs). Returns the last row's distilled FID."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from kdrun.training.sweep_files import note_failure

    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir).resolve()
    overrides = list(hydra_config.overrides.task)
    multirun = hydra_config.mode == RunMode.MULTIRUN
    with run_logging(run_dir, cfg.trainer.progress) as (console, file_log, display):
        try:
            summary = execute(cfg, run_dir, overrides, display, file_log)
        except KdrunError as error:
            if full_errors_requested():
                raise
            if not multirun:
                fail(error.one_line(), error.exit_code)
            sys.stderr.write(f"kdrun: error: job {run_dir.name} failed: {error.one_line()}\n")
            note_failure(f"job {run_dir.name} failed: {error.one_line()}")
            return float("nan")
    last = summary.rows[-1].distilled_fid if summary.rows else None
    return float("nan") if last is None else float(last)


def execute(cfg: Any, run_dir: Path, overrides: list[str], display: Any, file_log: Any) -> Any:
    from kdrun.diffusion.config import validate
    from kdrun.diffusion.pipeline import DiffusionRun
    from kdrun.training.device import configure_threads

    try:
        steps = validate(cfg)
        configure_threads(cfg.trainer.threads, 1)
        check_run_dir(run_dir, bool(cfg.resume))
        run = DiffusionRun(cfg, run_dir, display, steps)
    except ConfigError:
        discard_empty_run_dir(run_dir)
        raise
    started = datetime.datetime.now().astimezone()
    try:
        run.execute()
    except ConfigError as error:
        if not run.teacher:  # bad input found while loading (data, checkpoint): nothing to keep
            discard_empty_run_dir(run_dir)
            raise
        write_summary(run, overrides, started, "failed", error.one_line())
        raise
    except KdrunError as error:
        write_summary(run, overrides, started, "failed", error.one_line())
        raise
    except KeyboardInterrupt:
        write_summary(run, overrides, started, "interrupted", "interrupted by the user (Ctrl-C)")
        fail(f"interrupted; continue from its last checkpoint with: kdrun resume {run_dir}", 130)
    summary = write_summary(run, overrides, started, "completed")
    from kdrun.report.diffusion import print_run_table

    print_run_table(summary, run_dir, console_stdout(), file_log)
    return summary


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A new run needs a fresh dir; a resume needs an unfinished earlier run there."""
    if not resume:
        ensure_fresh_run_dir(run_dir, False)
        return
    summary = run_dir / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("status") == "completed":
        raise ConfigError(f"the run in {run_dir} already completed", "nothing to resume; start a new run in another hydra.run.dir")
    if not (run_dir / "metrics.jsonl").is_file() and not (run_dir / "checkpoints").is_dir():
        raise ConfigError(f"nothing to resume in {run_dir}: no earlier run there",
                          "pass the dir of an interrupted run: kdrun resume DIR, or hydra.run.dir=DIR resume=true")
    summary.unlink(missing_ok=True)  # it appears again when this attempt ends


def write_summary(run: Any, overrides: list[str], started: Any, status: str, error: str | None = None) -> Any:
    """summary.json, written last and atomically; also the FID-vs-steps plot and the samples overview."""
    import torch

    from kdrun.diffusion.results import DiffusionSummary, rows_from
    from kdrun.files import write_json_atomic
    from kdrun.report.diffusion import write_run_figures

    data = run.data
    summary = DiffusionSummary(
        status=status, error=error, run_dir=str(run.run_dir), seed=run.cfg.seed, overrides=overrides, device=str(run.device),
        dataset={"name": run.cfg.dataset.name, **({"train": len(data.train), "test": len(data.test)} if data else {})},
        teacher=run.teacher, fid=run.fid, rounds=run.events.rounds(), rows=rows_from(run.steps, run.events.all_evaluations()),
        started=started.isoformat(timespec="seconds"), finished=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        versions={"kdrun": __version__, "torch": torch.__version__},
    )
    summary.plot = write_run_figures(summary, run.run_dir)
    write_json_atomic(run.run_dir / "summary.json", summary.to_dict())
    return summary

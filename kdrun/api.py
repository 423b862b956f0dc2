"""kdrun from Python: the runs `kdrun train` makes, for notebooks and scripts.

    import kdrun
    summary = kdrun.run(["method=basic", "T=10", "student_epochs=30"])
    summary.phases["distilled"].test_acc, summary.gap_recovered, summary.run_dir

`run` composes the config with Hydra's compose API from the same conf/ and the same overrides as the
CLI (open model groups, the schema, the run dir pattern), writes the same run dir (.hydra/, train.log,
metrics.jsonl, summary.json, weights) and returns summary.json as a typed RunSummary. Errors are
raised as kdrun's exceptions (ConfigError for bad input, RunError for a failed run) instead of
printed: a notebook decides what to do with them. Nothing here imports torch until a run starts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from kdrun.errors import ConfigError
from kdrun.results import RunSummary


def run(overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> RunSummary:
    """One run, as `kdrun train OVERRIDES...` (one config: loop in Python for a sweep).

    Args:
        overrides: Hydra overrides exactly as on the command line, e.g. ["method=basic", "T=10"].
        run_dir: where the run writes; default the CLI's `outputs/runs/<date>/<time>_<overrides>`.

    Raises:
        ConfigError: bad overrides or input (nothing is written); RunError: the run failed (its
        summary.json says so); KeyboardInterrupt: interrupted (resume with `kdrun resume RUN_DIR`).
    """
    from kdrun.commands.train import ensure_fresh_run_dir, execute, run_logging

    composed = compose_run(list(overrides), run_dir)
    cfg, directory = composed.task, composed.run_dir
    ensure_fresh_run_dir(directory, bool(cfg.resume))  # before .hydra/ is written: a finished run stays untouched
    save_hydra_files(composed)
    with run_logging(directory, cfg.trainer.progress) as (console, file_log, display):
        try:
            summary = execute(cfg, directory, composed.overrides, console, file_log, display)
        except SystemExit as exit_:  # the CLI's way to end an interrupted run; here it is an interrupt again
            if exit_.code == 130:
                raise KeyboardInterrupt(f"run interrupted; continue with: kdrun resume {directory}") from None
            raise
    return RunSummary.from_json(summary)


def load_run(path: str | Path) -> RunSummary:
    """The summary of a finished (or failed, or interrupted) run dir.

    Raises:
        ConfigError: no readable summary.json in `path`.
    """
    directory = Path(path).expanduser().resolve()
    try:
        return RunSummary.load(directory)
    except FileNotFoundError:
        raise ConfigError(f"no summary.json in {directory}", "pass a kdrun run dir") from None
    except ValueError as error:
        raise ConfigError(f"{directory / 'summary.json'} is not a kdrun summary ({error})", "pass a kdrun run dir") from None


def report_table(path: str | Path) -> list[dict[str, Any]]:
    """The table of `kdrun report PATH` as plain rows: one dict per method/T/alpha group, means and stds."""
    from kdrun.report import group_runs, load_runs
    from kdrun.report.table import group_row

    return [group_row(group) for group in group_runs(load_runs(Path(path).expanduser().resolve()))]


def report_frame(path: str | Path) -> Any:
    """report_table as a pandas DataFrame.

    Raises:
        ConfigError: pandas is not installed.
    """
    try:
        import pandas
    except ImportError:
        raise ConfigError("report_frame needs pandas, which is not installed", "pip install 'kdrun[pandas]', or use report_table") from None
    return pandas.DataFrame(report_table(path))


@dataclass
class ComposedRun:
    """A composed config: the task's part (what the run reads), the whole (with hydra), where, and how it was asked for."""

    task: Any
    full: Any
    run_dir: Path
    overrides: list[str]  # as Hydra records them in .hydra/overrides.yaml


def compose_run(overrides: list[str], run_dir: str | Path | None) -> ComposedRun:
    """The config `kdrun train OVERRIDES` composes: same conf/, schema, open model groups and run dir pattern."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    from kdrun.cli import describe_config_error
    from kdrun.commands.resume import quoted
    from kdrun.config import config_dir, open_group_overrides, prepare_hydra

    prepare_hydra()
    items = open_group_overrides(overrides)
    if run_dir is not None:
        items.append("hydra.run.dir=" + quoted(str(Path(run_dir).expanduser().resolve())))
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="train"):
            full = compose("config", overrides=items, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as error:
        if "Ambiguous value" in str(error):  # Hydra's advice (add --multirun) does not apply here
            raise ConfigError(str(error).splitlines()[0], "kdrun.run takes one config: loop over the values in Python, "
                              "or sweep with kdrun train -m") from None
        raise ConfigError(describe_config_error(error)) from None
    HydraConfig.instance().set_config(full)  # resolves ${now:} and the override-named run dir
    task = copy.deepcopy(full)
    with open_dict(task):
        del task["hydra"]
    return ComposedRun(task, full, Path(str(full.hydra.run.dir)).expanduser().resolve(), list(full.hydra.overrides.task))


def save_hydra_files(composed: ComposedRun) -> None:
    """.hydra/config.yaml, hydra.yaml and overrides.yaml, as Hydra writes them for `kdrun train`
    (`kdrun resume` and `kdrun export` read them)."""
    from omegaconf import OmegaConf

    from kdrun.files import write_bytes_atomic

    folder = composed.run_dir / ".hydra"
    write_bytes_atomic(folder / "config.yaml", OmegaConf.to_yaml(composed.task).encode())
    write_bytes_atomic(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.masked_copy(composed.full, ["hydra"])).encode())
    write_bytes_atomic(folder / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(composed.overrides)).encode())

"""kdrun from Python: the runs `kdrun train` makes, for notebooks and scripts.

    import kdrun
    summary = kdrun.run(["method=basic", "T=10", "student_epochs=30"])
    summary.phases["distilled"].test_acc, summary.gap_recovered, summary.run_dir

`run` composes the config with Hydra's compose API from the same conf/ and the same overrides as the
CLI (open model groups, the schema, the run dir pattern), writes the same run dir (.hydra/, train.log,
metrics.jsonl, summary.json, weights) and returns summary.json as a typed RunSummary. Errors are
raised as kdrun's exceptions (ConfigError for bad input, RunError for a failed run) instead of
printed: a notebook decides what to do with them. Nothing here imports torch until a run starts. The
Hydra side (compose, .hydra/ files) is kdrun/commands/hydra_app.py, shared with the CLI; the run itself
is the same `run_and_show` as `kdrun train`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from kdrun.errors import ConfigError
from kdrun.results import SUMMARY_FILE, RunSummary, read_summary


def run(overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> RunSummary:
    """One run, as `kdrun train OVERRIDES...` (one config: loop in Python for a sweep).

    Args:
        overrides: Hydra overrides exactly as on the command line, e.g. ["method=basic", "T=10"].
        run_dir: where the run writes; default the CLI's `outputs/runs/<date>/<time>_<overrides>`.

    Raises:
        ConfigError: bad overrides or input (nothing is written); RunError: the run failed (its
        summary.json says so); Interrupted: Ctrl-C (continue with `kdrun resume RUN_DIR`).
    """
    from kdrun.commands.hydra_app import compose_run, hydra_errors, save_hydra_files
    from kdrun.commands.train import Job, run_and_show
    from kdrun.run_dir import ensure_fresh

    composed = compose_run(list(overrides), Path(run_dir).expanduser().resolve() if run_dir is not None else None)
    ensure_fresh(composed.run_dir, bool(composed.task.resume))  # before .hydra/ is written: a finished run stays untouched
    with hydra_errors(multirun=False):
        save_hydra_files(composed)
        return run_and_show(composed.task, Job(composed.run_dir, composed.overrides, multirun=False))


def load_run(path: str | Path) -> RunSummary:
    """The summary of a finished (or failed, or interrupted) run dir.

    Raises:
        ConfigError: no readable summary.json in `path`.
    """
    directory = Path(path).expanduser().resolve()
    try:
        return read_summary(directory / SUMMARY_FILE)
    except FileNotFoundError:
        raise ConfigError(f"no summary.json in {directory}", "pass a kdrun run dir") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"{directory / SUMMARY_FILE} is not a readable kdrun summary ({error})", "pass a kdrun run dir") from None


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

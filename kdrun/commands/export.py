"""`kdrun export RUN_DIR`: ONNX (and torch.export) files of a finished run's students, checked on its test split.

The same export as `kdrun train export=[onnx]`, afterwards: the students are read back from the run's
weight files, the data and the student's architecture from its recorded config (.hydra/config.yaml,
through the same kdrun/training/from_config.py as a run). The results join summary.json under
"export" (rewritten atomically; every other field stays as the run wrote it). Errors are raised:
kdrun/cli.py prints them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdrun.errors import ConfigError
from kdrun.results import SUMMARY_FILE, RunSummary


def main(arguments: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="kdrun export", description="Export a run's distilled (and compressed) students.")
    parser.add_argument("run_dir", type=Path, help="a completed run dir (holds summary.json and .hydra/config.yaml)")
    parser.add_argument("--format", "-f", action="append", dest="formats", metavar="FORMAT",
                        help="onnx (default) or torch_export; repeat for both")
    options = parser.parse_args(arguments)
    export(options.run_dir.expanduser().resolve(), options.formats or ["onnx"])


def export(run_dir: Path, formats: list[str]) -> RunSummary:
    """Export, record in summary.json, print the table; returns the updated summary."""
    import logging

    from omegaconf import OmegaConf
    from rich.console import Console

    from kdrun.commands.hydra_app import hydra_errors
    from kdrun.display import ConsoleLogHandler, export_table
    from kdrun.export.from_run import export_run
    from kdrun.export.runner import export_formats
    from kdrun.results import write_summary
    from kdrun.training.device import configure_threads
    from kdrun.training.from_config import export_settings, load_data, model_spec, plain

    summary = finished_summary(run_dir)
    export_formats(formats)  # unknown format or missing package: say so before loading any data
    with hydra_errors(multirun=False):
        cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        settings, student = export_settings(cfg, formats), model_spec(plain(cfg.student))
        dataset, seed, threads = plain(cfg.dataset), int(cfg.seed), cfg.trainer.threads
    logger = logging.getLogger("kdrun")
    logger.setLevel(logging.INFO)
    handler = ConsoleLogHandler(Console(stderr=True))
    logger.addHandler(handler)
    try:
        configure_threads(threads, 1)
        results = export_run(settings, student, load_data(dataset, seed), summary.phases, run_dir, seed)
    finally:
        logger.removeHandler(handler)
    for phase, by_format in results.items():
        summary.export.setdefault(phase, {}).update(by_format)
    write_summary(run_dir, summary)
    Console(width=130).print(export_table(results))
    return summary


def finished_summary(run_dir: Path) -> RunSummary:
    from kdrun.results import read_summary

    if not (run_dir / SUMMARY_FILE).is_file() or not (run_dir / ".hydra" / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a kdrun run dir (no summary.json or .hydra/config.yaml)", "pass the dir of a completed run")
    try:
        summary = read_summary(run_dir / SUMMARY_FILE)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{run_dir / SUMMARY_FILE} is unreadable ({error})", "pass the dir of a completed run") from None
    if summary.status != "completed" or "distilled" not in summary.phases:
        raise ConfigError(f"the run in {run_dir} is {summary.status}, without a distilled student to export",
                          "export a completed run (kdrun resume it first)")
    return summary

"""`kdrun export RUN_DIR`: ONNX (and torch.export) files of a finished run's students, checked on its test split.

The same export as `kdrun train export=[onnx]`, afterwards: the students are read back from the run's
weight files, the data from its recorded config (.hydra/config.yaml). The results join summary.json
under "export" (rewritten atomically; every other field stays as the run wrote it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kdrun.cli import fail
from kdrun.errors import ConfigError, KdrunError


def main(arguments: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="kdrun export", description="Export a run's distilled (and compressed) students.")
    parser.add_argument("run_dir", type=Path, help="a completed run dir (holds summary.json and .hydra/config.yaml)")
    parser.add_argument("--format", "-f", action="append", dest="formats", metavar="FORMAT",
                        help="onnx (default) or torch_export; repeat for both")
    options = parser.parse_args(arguments)
    try:
        export(options.run_dir.expanduser().resolve(), options.formats or ["onnx"])
    except KdrunError as error:
        fail(error.one_line(), error.exit_code)


def export(run_dir: Path, formats: list[str]) -> dict:
    """Export, record in summary.json, print the table; returns the updated summary."""
    import logging

    from omegaconf import OmegaConf
    from rich.console import Console

    from kdrun.display import ConsoleLogHandler, export_table
    from kdrun.export.from_run import export_run
    from kdrun.export.runner import export_formats
    from kdrun.files import write_json_atomic
    from kdrun.training.device import configure_threads
    from kdrun.training.from_config import load_data

    summary = finished_summary(run_dir)
    export_formats(formats)  # unknown format or missing package: say so before loading any data
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    logger = logging.getLogger("kdrun")
    logger.setLevel(logging.INFO)
    handler = ConsoleLogHandler(Console(stderr=True))
    logger.addHandler(handler)
    try:
        configure_threads(cfg.trainer.threads, 1)
        results = export_run(cfg, load_data(cfg.dataset, cfg.seed), summary["phases"], run_dir, formats)
    finally:
        logger.removeHandler(handler)
    merged = summary.get("export", {})
    for phase, by_format in results.items():
        merged.setdefault(phase, {}).update(by_format)
    summary["export"] = merged
    write_json_atomic(run_dir / "summary.json", summary)
    Console(width=130).print(export_table(results))
    return summary


def finished_summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    if not path.is_file() or not (run_dir / ".hydra" / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a kdrun run dir (no summary.json or .hydra/config.yaml)", "pass the dir of a completed run")
    summary = json.loads(path.read_text())
    if summary.get("status") != "completed" or "distilled" not in summary.get("phases", {}):
        raise ConfigError(f"the run in {run_dir} is {summary.get('status')}, without a distilled student to export",
                          "export a completed run (kdrun resume it first)")
    return summary

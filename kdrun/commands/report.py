"""`kdrun report PATH`: a run dir or a sweep dir -> rich table, report.md, report.csv and PNG plots in PATH."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any


def main(arguments: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="kdrun report", description="Tables and plots for a run dir or a sweep dir.")
    parser.add_argument("path", type=Path, help="a run dir (holds summary.json) or a sweep dir (runs below it)")
    options = parser.parse_args(arguments)
    logging.basicConfig(level=logging.WARNING, format="kdrun: warning: %(message)s", stream=sys.stderr)  # e.g. a skipped summary
    build_report(options.path.expanduser().resolve())


def build_report(path: Path) -> None:
    from rich.console import Console

    from kdrun.report import group_runs, load_runs
    from kdrun.report.aggregate import learning_curves, reference_level
    from kdrun.report.diffusion import report_diffusion_runs
    from kdrun.report.load import read_metrics
    from kdrun.report.write import write_csv, write_markdown

    if report_diffusion_runs(path) and not any_classifier_runs(path):  # `kdrun diffusion` run dirs (docs/diffusion.md)
        return
    records = load_runs(path)
    groups = group_runs(records)
    plots = make_plots(path, records, groups, reference_level, learning_curves, read_metrics)
    write_csv(records, path / "report.csv")
    write_markdown(path / "report.md", groups, records, plots)
    console = Console() if Console().is_terminal else Console(width=130)
    console.print(results_table(path, groups))
    print_failures(console, records)
    console.print("tuning uses the validation split (distilled val = best_val_acc); report the test split (test_acc)")
    console.print(f"wrote {path / 'report.md'}, {path / 'report.csv'} and {len(plots)} plot(s)", soft_wrap=True, markup=False)


def any_classifier_runs(path: Path) -> bool:
    """Whether `kdrun train` runs lie below `path` (next to diffusion ones)."""
    from kdrun.report.load import summaries_below
    from kdrun.results import RunSummary

    return any(isinstance(summary, RunSummary) for summary in summaries_below(path))


def make_plots(path: Path, records: list, groups: list, reference_level: Any, learning_curves: Any, read_metrics: Any) -> list[Path]:
    from kdrun.report import plots

    if not groups:
        return []
    teacher, independent = reference_level(records, "teacher"), reference_level(records, "independent")
    metrics = {str(record.run_dir): read_metrics(record.run_dir) for record in records}
    return [
        plots.accuracy_vs_temperature(groups, teacher, independent, path / "accuracy_vs_T.png"),
        plots.heatmap(groups, teacher, independent, path / "heatmap_alpha_T.png"),
        plots.learning_curves(learning_curves(records, metrics), path / "learning_curves.png"),
    ]


def results_table(path: Path, groups: list) -> Any:
    from rich.table import Table

    from kdrun.report.write import HEADERS, group_cells

    table = Table(title=f"kdrun report: {path.name} (mean ± std over seeds)")
    for header in HEADERS:
        if header == "method":  # may carry the swept settings: fold it rather than cut it off
            table.add_column(header, justify="left", overflow="fold", min_width=24)
        else:
            table.add_column(header, justify="right")
    for group in groups:
        table.add_row(*group_cells(group))
    return table


def print_failures(console: Any, records: list) -> None:
    from rich.markup import escape  # run dir names hold overrides such as compress=[prune]: not markup

    for record in records:
        if record.status != "completed":
            console.print(f"[red]{record.status}[/red] {escape(f'{record.run_dir.name}: {record.error}')}", soft_wrap=True)

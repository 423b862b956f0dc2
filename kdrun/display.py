"""What a person sees: rich progress bars in a terminal, log lines, and the final results table.

Only the CLI uses this module; library code reports through `logging` and PhaseObserver events.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from kdrun.results import EpochRecord, Exports, PhaseSummary, RunSummary

COMPRESSION_COLUMNS = ("non-zero", "MB", "CPU ms")  # shown when a run has compression stages


class ConsoleLogHandler(logging.Handler):
    """Log records printed through the rich console, so they appear above live progress bars."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        self.console.print(prefix + record.getMessage(), markup=False, highlight=False, soft_wrap=True)


class ProgressDisplay:
    """A progress bar per phase when stderr is a terminal; nothing otherwise (log lines suffice)."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.enabled = enabled and console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=console, transient=True, disable=not self.enabled,
        )
        self.tasks: dict[str, Any] = {}

    def phase_started(self, phase: str, epochs: int, steps_per_epoch: int) -> None:
        if self.enabled:
            self.progress.start()
            self.tasks[phase] = self.progress.add_task(phase, total=epochs * steps_per_epoch)

    def step_done(self, phase: str) -> None:
        if self.enabled:
            self.progress.advance(self.tasks[phase])

    def epoch_done(self, record: EpochRecord) -> None:
        pass

    def phase_done(self, phase: str) -> None:
        if self.enabled:
            self.progress.remove_task(self.tasks.pop(phase))
            self.progress.stop()


def results_table(summary: RunSummary) -> Table:
    """Teacher / independent / distilled: test accuracy (best-val weights and last epoch), size, time."""
    name = summary.dataset.name if summary.dataset is not None else ""
    table = Table(title=f"kdrun: {name} ({summary.status})", title_justify="left")
    compressed = any(result.compressed for result in summary.phases.values())
    columns = ("phase", "source", "test acc", "last epoch", "best epoch", "params", "time")
    for column in columns + (COMPRESSION_COLUMNS if compressed else ()):
        table.add_column(column, justify="left" if column in ("phase", "source") else "right", no_wrap=True)
    for phase, result in summary.phases.items():
        table.add_row(
            phase,
            result.source,
            f"{result.test_acc:.4f}",
            f"{result.test_acc_last:.4f}",
            "-" if result.best_epoch is None else str(result.best_epoch),
            f"{result.params:,}",
            f"{result.seconds:.1f}s",
            *(compression_cells(result) if compressed else ()),
        )
    gap = summary.gap_recovered
    distilled = summary.phases.get("distilled")
    method = f"method {distilled.method}, T={distilled.T:g}, alpha={distilled.alpha:g}; " if distilled else ""
    table.caption = (
        f"test acc: best-validation weights. {method}gap recovered: "
        + ("n/a" if gap is None else f"{gap:.2f}")
        + " = (distilled - independent) / (teacher - independent)"
        + ("; MB: weights file on disk, CPU ms: median forward per batch" if compressed else "")
    )
    table.caption_justify = "left"
    return table


def compression_cells(result: PhaseSummary) -> tuple[str, ...]:
    """Non-zero parameters, size on disk (MB) and median CPU ms per batch; '-' for rows not measured (teacher)."""
    if not result.compressed:
        return ("-",) * len(COMPRESSION_COLUMNS)
    return (f"{result.nonzero_params:,}", f"{result.size_mb:.3f}", f"{result.latency_ms:.2f}")


def export_table(exports: Exports) -> Table:
    """One row per exported file: how closely it predicts like PyTorch, and how fast, on the CPU."""
    table = Table(title="exported students (checked on the test split)", title_justify="left")
    for column in ("phase", "format", "file", "max |diff|", "top-1 agree", "test acc", "CPU ms", "PyTorch ms"):
        table.add_column(column, justify="left" if column in ("phase", "format", "file") else "right", no_wrap=column != "file")
    batch_sizes = set()
    for phase, by_format in exports.items():
        for name, check in by_format.items():
            if check.error or check.path is None:
                table.add_row(phase, name, f"failed: {(check.error or '')[:60]}", "-", "-", "-", "-", "-")  # whole: summary.json
                continue
            batch_sizes.add(str(check.latency_batch_size))
            table.add_row(phase, name, Path(check.path).name, f"{check.max_abs_diff:.1e}", f"{check.top1_agreement:.4f}",
                          f"{check.test_acc_exported:.4f}", f"{check.latency_ms_exported:.3f}", f"{check.latency_ms_pytorch:.3f}")
    table.caption = f"max |diff|: of the logits; CPU ms: median forward of a batch of {', '.join(sorted(batch_sizes))} test input(s)"
    table.caption_justify = "left"
    return table


def print_results(summary: RunSummary, run_dir: Path, console: Console, file_log: logging.Logger) -> None:
    """Print the table(s) to stdout and their plain-text form into train.log."""
    tables = [results_table(summary), *([export_table(summary.export)] if summary.export else [])]
    plain = Console(file=io.StringIO(), width=130, color_system=None, legacy_windows=False)
    for table in tables:
        console.print(table)
        plain.print(table)
    console.print(f"run dir: {run_dir}", markup=False, highlight=False, soft_wrap=True)
    file_log.info("%s\nrun dir: %s", plain.file.getvalue().rstrip(), run_dir)

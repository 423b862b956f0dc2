"""report.csv (one row per run, as in the summaries) and report.md (seed-aggregated table, failures, plots)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional

from kdrun.files import write_bytes_atomic
from kdrun.report.aggregate import Group
from kdrun.report.load import RunRecord
from kdrun.report.table import COLUMNS, group_row

SPLIT_NOTE = (
    "Tuning (choosing alpha, T, the best epoch) uses the **validation** split (`best_val_acc`); "
    "the numbers to report are **test** accuracies (`test_acc`, of the best-validation weights)."
)


def write_csv(records: list[RunRecord], path: Path) -> None:
    rows = [record.csv_row() for record in records]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, text.getvalue().encode())


def fmt(mean: Optional[float], std: Optional[float], digits: int = 4) -> str:
    """`0.9512 ± 0.0031` when several seeds, `0.9512` for one, `-` for none."""
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if not std else f"{mean:.{digits}f} ± {std:.{digits}f}"


def group_cells(group: Group) -> list[str]:
    """The plain row (report/table.py) as the table's text cells."""
    row = group_row(group)
    columns = [fmt(row[column], row[f"{column}_std"]) for column in COLUMNS]
    return [
        group.label(), f"{group.T:g}" if group.T is not None else "-", f"{group.alpha:g}" if group.alpha is not None else "-",
        str(row["seeds"]), *columns, fmt(row["gap_recovered"], row["gap_recovered_std"], digits=2),
    ]


HEADERS = ["method", "T", "alpha", "seeds", "teacher test", "independent test", "distilled val", "distilled test", "gap recovered"]


def write_markdown(path: Path, groups: list[Group], records: list[RunRecord], plots: list[Path]) -> None:
    failed = [record for record in records if record.status != "completed"]
    lines = [
        f"# kdrun report: {path.parent}", "",
        f"{len(records)} run(s): {len(records) - len(failed)} completed, {len(failed)} failed or interrupted.", "",
        SPLIT_NOTE, "",
        "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS),
        *["| " + " | ".join(group_cells(group)) + " |" for group in groups], "",
    ]
    if failed:
        lines += ["## Failed runs", "", "| run | status | error |", "|---|---|---|"]
        lines += [f"| {record.run_dir.name} | {record.status} | {record.error.replace('|', '/')} |" for record in failed]
        lines.append("")
    if plots:
        lines += ["## Plots", "", *[f"![{plot.stem}]({plot.name})" for plot in plots], ""]
    lines += ["Per-run numbers: report.csv (one row per summary.json).", ""]
    write_bytes_atomic(path, "\n".join(lines).encode())

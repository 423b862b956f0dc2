"""The report's table as plain rows: one dict per group of runs, numbers not text.

`kdrun report` formats these rows (report.md, the console); `kdrun.report_table(path)` returns them
as they are, for notebooks (`kdrun.report_frame(path)`: the same as a pandas DataFrame).
"""

from __future__ import annotations

from typing import Any

from kdrun.report.aggregate import Group

# column -> (phase, summary field) whose mean and std over seeds the column shows
COLUMNS = {
    "teacher_test": ("teacher", "test_acc"),
    "independent_test": ("independent", "test_acc"),
    "distilled_val": ("distilled", "best_val_acc"),  # what tuning may look at
    "distilled_test": ("distilled", "test_acc"),  # what to report
}


def group_row(group: Group) -> dict[str, Any]:
    """method, variant, T, alpha, seeds, then mean and `_std` of each column and of gap_recovered."""
    row: dict[str, Any] = {"method": group.method, "variant": group.variant, "T": group.T, "alpha": group.alpha,
                           "seeds": len(group.runs)}
    for column, (phase, key) in COLUMNS.items():
        row[column], row[f"{column}_std"] = group.mean_std(phase, key)
    row["gap_recovered"], row["gap_recovered_std"] = group.gap()
    return row

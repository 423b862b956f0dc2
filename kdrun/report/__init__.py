"""`kdrun report`: load the summaries under a path, aggregate over seeds, write report.md/report.csv and plots."""

from kdrun.report.aggregate import Group, group_runs
from kdrun.report.load import RunRecord, load_runs

__all__ = ["Group", "RunRecord", "group_runs", "load_runs"]

"""Grouping runs that differ only by seed, into mean and standard deviation."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Optional

from kdrun.report.load import RunRecord
from kdrun.results import PHASES


@dataclass
class Group:
    """Completed runs with the same method, T, alpha and other swept settings (any seeds)."""

    method: Optional[str]
    T: Optional[float]
    alpha: Optional[float]
    runs: list[RunRecord]
    variant: str = ""  # the other overrides that vary across the sweep, e.g. "method.scale_by_T2=false"

    def label(self) -> str:
        name = self.method or "-"
        return f"{name} ({self.variant})" if self.variant else name

    def values(self, phase: str, key: str = "test_acc") -> list[float]:
        return [value for value in (run.accuracy(phase, key) for run in self.runs) if value is not None]

    def mean_std(self, phase: str, key: str = "test_acc") -> tuple[Optional[float], Optional[float]]:
        return mean_std(self.values(phase, key))

    def gap(self) -> tuple[Optional[float], Optional[float]]:
        return mean_std([run.gap_recovered for run in self.runs if run.gap_recovered is not None])


def mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    """Sample std over seeds; 0 for a single value, None for none."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


GROUPED_APART = {"seed", "method", "T", "alpha"}  # seeds are averaged; the others have their own columns


def varying_overrides(records: list[RunRecord]) -> dict[str, str]:
    """run_dir -> the overrides that differ between runs (besides seed/method/T/alpha), as one label.

    A sweep over, say, `method.scale_by_T2=true,false` must not average the two settings together.
    """
    settings = [dict(item.split("=", 1) for item in record.overrides if "=" in item) for record in records]
    keys = sorted({key for setting in settings for key in setting} - GROUPED_APART)
    varying = [key for key in keys if len({setting.get(key) for setting in settings}) > 1]
    return {
        str(record.run_dir): ", ".join(f"{key}={setting[key]}" for key in varying if key in setting)
        for record, setting in zip(records, settings)
    }


def group_runs(records: list[RunRecord]) -> list[Group]:
    completed = [record for record in records if record.status == "completed"]
    variants = varying_overrides(completed)
    groups: dict[tuple, list[RunRecord]] = {}
    for record in completed:
        key = (record.method or "", record.T, record.alpha, variants[str(record.run_dir)])
        groups.setdefault(key, []).append(record)
    ordered = sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] or 0, item[0][2] or 0, item[0][3]))
    return [Group(method or None, T, alpha, runs, variant) for (method, T, alpha, variant), runs in ordered]


def reference_level(records: list[RunRecord], phase: str) -> tuple[Optional[float], Optional[float]]:
    """Teacher or independent test accuracy over completed runs, one value per distinct trained model.

    A sweep reuses one cached teacher in every job; counting it once per seed keeps the std honest.
    """
    per_model: dict[str, float] = {}
    for record in records:
        if record.status != "completed" or phase not in record.phases:
            continue
        value = record.accuracy(phase)
        if value is not None:
            per_model.setdefault(str(record.phases[phase].weights or record.run_dir), value)
    return mean_std(list(per_model.values()))


def learning_curves(records: list[RunRecord], metrics_by_run: dict[str, list[dict]]) -> dict[str, dict[str, dict[int, list[float]]]]:
    """phase -> label -> epoch -> val_acc values (over seeds/runs that trained that phase)."""
    curves: dict[str, dict[str, dict[int, list[float]]]] = {phase: {} for phase in PHASES}
    for record in records:
        for line in metrics_by_run.get(str(record.run_dir), []):
            phase = line.get("phase")
            if phase not in curves or line.get("val_acc") is None:
                continue
            label = f"T={record.T:g}, alpha={record.alpha:g}" if phase == "distilled" and record.T is not None and record.alpha is not None else phase
            curves[phase].setdefault(label, {}).setdefault(int(line["epoch"]), []).append(float(line["val_acc"]))
    return curves

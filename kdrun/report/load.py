"""Finding and flattening runs: every summary.json below a path becomes one RunRecord."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from kdrun.errors import ConfigError

log = logging.getLogger(__name__)

PHASES = ("teacher", "independent", "distilled")


@dataclass
class RunRecord:
    """One run as the report sees it: its settings, per-phase accuracies and where it lives."""

    run_dir: Path
    status: str
    error: str
    method: Optional[str]
    T: Optional[float]
    alpha: Optional[float]
    seed: Optional[int]
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    gap_recovered: Optional[float] = None
    overrides: list[str] = field(default_factory=list)

    def accuracy(self, phase: str, key: str = "test_acc") -> Optional[float]:
        return self.phases.get(phase, {}).get(key)

    def csv_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "run_dir": str(self.run_dir), "status": self.status, "method": self.method, "T": self.T,
            "alpha": self.alpha, "seed": self.seed,
        }
        for phase in PHASES:
            for key in ("source", "test_acc", "best_val_acc"):
                row[f"{phase}_{key}"] = self.phases.get(phase, {}).get(key)
        row.update(gap_recovered=self.gap_recovered, error=self.error, overrides=" ".join(self.overrides))
        return row


def load_runs(path: Path) -> list[RunRecord]:
    """All runs at or below `path`, sorted by directory; a path without any is a ConfigError."""
    if not path.exists():
        raise ConfigError(f"{path} does not exist", "give a run dir or a sweep dir, e.g. outputs/multirun/<date>/<time>")
    summaries = sorted(path.rglob("summary.json")) if path.is_dir() else []
    records = [record for record in (read_record(summary) for summary in summaries) if record is not None]
    if not records:
        raise ConfigError(f"no runs (summary.json) found under {path}", "point kdrun report at a run dir or a sweep dir")
    return records


def read_record(summary_path: Path) -> Optional[RunRecord]:
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as error:
        log.warning("skipping unreadable %s (%s)", summary_path, error)
        return None
    if summary.get("kind") == "diffusion":  # `kdrun diffusion` runs have their own report (report/diffusion.py)
        return None
    overrides = list(summary.get("overrides", []))
    distilled = summary.get("phases", {}).get("distilled", {})
    return RunRecord(
        run_dir=summary_path.parent,
        status=summary.get("status", "unknown"),
        error=summary.get("error", ""),
        method=distilled.get("method", override_value(overrides, "method")),
        T=as_float(distilled.get("T", override_value(overrides, "T"))),
        alpha=as_float(distilled.get("alpha", override_value(overrides, "alpha"))),
        seed=summary.get("seed"),
        phases=summary.get("phases", {}),
        gap_recovered=summary.get("gap_recovered"),
        overrides=overrides,
    )


def override_value(overrides: list[str], key: str) -> Optional[str]:
    """The value of `key=value` among the overrides (failed runs may have no phases to read it from)."""
    for item in overrides:
        name, _, value = item.partition("=")
        if name == key:
            return value
    return None


def as_float(value: Any) -> Optional[float]:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl lines; missing file (failed before training) -> no lines, a torn last line is skipped."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:
            continue
    return lines

"""Finding and flattening runs: every summary.json below a path becomes one RunRecord."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from kdrun.errors import ConfigError
from kdrun.results import PHASES, AnySummary, PhaseSummary, RunSummary, read_summary
from kdrun.sweep_files import PHASE_COLUMNS

log = logging.getLogger(__name__)


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
    phases: dict[str, PhaseSummary] = field(default_factory=dict)
    gap_recovered: Optional[float] = None
    overrides: list[str] = field(default_factory=list)

    def accuracy(self, phase: str, key: str = "test_acc") -> Optional[float]:
        return getattr(self.phases[phase], key) if phase in self.phases else None

    def csv_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "run_dir": str(self.run_dir), "status": self.status, "method": self.method, "T": self.T,
            "alpha": self.alpha, "seed": self.seed,
        }
        for phase in PHASES:
            for key in PHASE_COLUMNS:
                row[f"{phase}_{key}"] = getattr(self.phases[phase], key) if phase in self.phases else None
        row.update(gap_recovered=self.gap_recovered, error=self.error, overrides=" ".join(self.overrides))
        return row


def load_runs(path: Path) -> list[RunRecord]:
    """All readable runs at or below `path`, sorted by directory.

    An unreadable summary.json (corrupt JSON, not a JSON object, no permission) is named with the
    reason in a warning and left out; the others are reported. Only when no summary is readable is
    that an error, naming the first unreadable file.

    Raises:
        ConfigError: when `path` does not exist or holds no readable summary.json.
    """
    if not path.exists():
        raise ConfigError(f"{path} does not exist", "give a run dir or a sweep dir, e.g. outputs/multirun/<date>/<time>")
    summaries = sorted(path.rglob("summary.json")) if path.is_dir() else []
    records, unreadable = [], []
    for summary in summaries:
        try:
            record = read_record(summary)
        except UnreadableSummary as error:
            unreadable.append(error)
            continue
        if record is not None:
            records.append(record)
    if not records and unreadable:
        raise ConfigError(f"no readable run under {path}: {unreadable[0]}" + (f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""),
                          "fix or delete the unreadable summary.json files; each run writes its own when it ends")
    if not records:
        raise ConfigError(f"no runs (summary.json) found under {path}", "point kdrun report at a run dir or a sweep dir")
    for error in unreadable:
        log.warning("skipped %s; reporting the %d readable run(s)", error, len(records))
    return records


class UnreadableSummary(Exception):
    """A summary.json that cannot be read as a run, with the reason: '<path> is unreadable (<why>)'."""


def summaries_below(path: Path) -> list[AnySummary]:
    """Every readable summary.json at or below `path`, of any kind (`load_runs` names the unreadable ones)."""
    found = []
    for summary_path in sorted(path.rglob("summary.json")) if path.is_dir() else []:
        try:
            found.append(read_summary(summary_path))
        except (OSError, ValueError):
            continue
    return found


def read_record(summary_path: Path) -> Optional[RunRecord]:
    """The `kdrun train` run recorded in `summary_path`; None for another command's run (`kdrun diffusion`: report/diffusion.py).

    Raises:
        UnreadableSummary: when the file cannot be read, is not JSON, or is not a summary's JSON object.
    """
    try:
        summary = read_summary(summary_path)
    except (OSError, ValueError) as error:  # ValueError: JSON syntax, undecodable bytes, not a summary's object
        raise UnreadableSummary(f"{summary_path} is unreadable ({error})") from None
    if not isinstance(summary, RunSummary):
        return None
    return RunRecord(
        run_dir=summary_path.parent,
        status=summary.status,
        error=summary.error or "",
        method=summary.setting("method"),
        T=as_float(summary.setting("T")),
        alpha=as_float(summary.setting("alpha")),
        seed=summary.seed,
        phases=summary.phases,
        gap_recovered=summary.gap_recovered,
        overrides=summary.overrides,
    )


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

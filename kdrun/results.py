"""summary.json as typed objects: what `kdrun.run(...)` returns and `kdrun.load_run(path)` reads.

The JSON layout is the contract of ../shared/DESIGN.md; these classes give it names and types so a
notebook writes `summary.phases["distilled"].test_acc` instead of nested dict lookups. Fields a
phase row has beyond the common ones (a method's T and alpha, compression measurements, a stage's
settings) stay available in `PhaseSummary.extra`. No torch here: reading results must stay cheap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

SUMMARY_FILE = "summary.json"


@dataclass
class PhaseSummary:
    """One phase's row: teacher, independent, distilled, or a compression stage (`source` 'from <phase>')."""

    source: str
    test_acc: float
    test_acc_last: float
    best_epoch: Optional[int]
    best_val_acc: float
    params: int
    seconds: float
    weights: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)  # method, T, alpha, latency_ms, size_mb, ...

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> "PhaseSummary":
        known = {item.name for item in fields(cls)} - {"extra"}
        return cls(**{name: row.get(name) for name in known}, extra={key: value for key, value in row.items() if key not in known})

    def to_json(self) -> dict[str, Any]:
        row = {item.name: getattr(self, item.name) for item in fields(self) if item.name != "extra"}
        return {**row, **self.extra}


@dataclass
class RunSummary:
    """How a run ended (`status`: completed, failed, interrupted), what each phase achieved, where its files are."""

    status: str
    run_dir: Path
    phases: dict[str, PhaseSummary]
    gap_recovered: Optional[float] = None
    error: Optional[str] = None
    seed: Optional[int] = None
    overrides: list[str] = field(default_factory=list)
    device: Optional[str] = None
    dataset: dict[str, Any] = field(default_factory=dict)
    export: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # phase -> format -> check
    started: Optional[str] = None
    finished: Optional[str] = None
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def test_acc(self, phase: str = "distilled") -> Optional[float]:
        """The phase's test accuracy (best-validation weights); None when the phase did not run."""
        row = self.phases.get(phase)
        return row.test_acc if row is not None else None

    def rows(self) -> list[dict[str, Any]]:
        """The run's table as plain rows (the one `kdrun train` prints), one per phase."""
        return [{"phase": name, "source": row.source, "test_acc": row.test_acc, "test_acc_last": row.test_acc_last,
                 "best_epoch": row.best_epoch, "best_val_acc": row.best_val_acc, "params": row.params, "seconds": row.seconds}
                for name, row in self.phases.items()]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunSummary":
        """Parse a summary.json object (a failed job's short summary too).

        Raises:
            ValueError: the content is not a summary (not an object, or phases that are not rows).
        """
        phases = data.get("phases", {}) if isinstance(data, dict) else None
        if not isinstance(phases, dict) or not all(isinstance(row, dict) for row in phases.values()):
            raise ValueError("not a kdrun summary (expected a JSON object whose 'phases' are objects)")
        return cls(
            status=data.get("status", "unknown"), run_dir=Path(data.get("run_dir", "")),
            phases={name: PhaseSummary.from_json(row) for name, row in phases.items()},
            gap_recovered=data.get("gap_recovered"), error=data.get("error"), seed=data.get("seed"),
            overrides=list(data.get("overrides", [])), device=data.get("device"), dataset=dict(data.get("dataset", {})),
            export=dict(data.get("export", {})), started=data.get("started"), finished=data.get("finished"),
            versions=dict(data.get("versions", {})),
        )

    @classmethod
    def load(cls, run_dir: Path) -> "RunSummary":
        """The summary of the run in `run_dir`.

        Raises:
            FileNotFoundError: no summary.json there; ValueError: it is not a summary.
        """
        return cls.from_json(json.loads((Path(run_dir) / SUMMARY_FILE).read_text()))

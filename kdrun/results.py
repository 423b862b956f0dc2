"""What a run produces, as typed objects, and the only reader and writer of summary.json.

A phase's epochs are `EpochRecord`s (one metrics.jsonl line each); the training loop returns a
`PhaseResult`; the run keeps one `PhaseSummary` per phase (its row in the table and in summary.json)
and one `ExportResult` per exported file, and ends as a `RunSummary`. Everything that shows or
aggregates results (the table, `kdrun report`, sweep rows, trackers) reads these objects instead of
looking up dict keys, and the JSON layout of summary.json (../shared/DESIGN.md) is written and
parsed here only. No torch: reports and sweep tools read results without it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

from kdrun.diffusion_results import DiffusionSummary, is_diffusion_summary

PHASES = ("teacher", "independent", "distilled")  # the training phases, in the order a run makes them
SUMMARY_FILE = "summary.json"


@dataclass
class EpochRecord:
    """One line of metrics.jsonl."""

    phase: str
    epoch: int
    loss: dict[str, float]
    train_acc: float
    val_acc: float
    lr: float
    T: Optional[float]
    samples_per_s: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PhaseResult:
    """What the training loop achieved in one phase; `history` holds every epoch's record."""

    best_epoch: int
    best_val_acc: float
    test_acc: float
    test_acc_last: float
    seconds: float
    history: list[EpochRecord] = field(default_factory=list)

    def summary(self, params: int) -> "PhaseSummary":
        """The phase's row for a model trained in this run."""
        return PhaseSummary("trained", self.test_acc, self.test_acc_last, self.best_epoch, self.best_val_acc, params, self.seconds)


@dataclass
class PhaseSummary:
    """A phase's row in the table and in summary.json; optional fields are left out of the JSON when unset.

    `source` is trained, cache, checkpoint, or `from <phase>` for a compression stage. Compression adds
    `nonzero_params`, `size_mb`, `latency_ms`, and a stage's own settings in `extra`.
    """

    source: str
    test_acc: float
    test_acc_last: float
    best_epoch: Optional[int]  # None (JSON null) when the model was not trained here
    best_val_acc: float
    params: int
    seconds: float
    train_seconds: Optional[float] = None  # a cached model: how long its training took back then
    method: Optional[str] = None  # distilled: the method and its T and alpha
    T: Optional[float] = None
    alpha: Optional[float] = None
    teacher_logits_seconds: Optional[float] = None
    weights: Optional[str] = None
    cache_entry: Optional[str] = None
    extra_params: Optional[int] = None  # a method's adapters: trained with the student, not exported
    stacked: Optional[int] = None  # distilled: trained with this many students in one pass (kdrun_stacked launcher); seconds = that pass
    extra: dict[str, Any] = field(default_factory=dict)  # a compression stage's settings (amount, scheme, ...)
    nonzero_params: Optional[int] = None
    size_mb: Optional[float] = None
    latency_ms: Optional[float] = None

    @property
    def compressed(self) -> bool:
        """True for rows with compression measurements (the table then shows their columns)."""
        return self.latency_ms is not None

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "extra":
                row.update(value)
            elif value is not None or item.name in _REQUIRED_PHASE_FIELDS:
                row[item.name] = value
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> "PhaseSummary":
        """A row as written by `to_json` (or by an older kdrun); keys it does not know go to `extra`."""
        known = {item.name for item in fields(cls)} - {"extra"}
        values = {name: row.get(name) for name in known}
        return cls(**values, extra={key: value for key, value in row.items() if key not in known})


_REQUIRED_PHASE_FIELDS = {"source", "test_acc", "test_acc_last", "best_epoch", "best_val_acc", "params", "seconds"}


@dataclass
class DatasetInfo:
    """The data a run used; the sizes are unknown when it failed before loading them."""

    name: str
    train: Optional[int] = None
    val: Optional[int] = None
    test: Optional[int] = None
    classes: Optional[list[str]] = None

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass
class ExportResult:
    """One exported file (kdrun/export/) checked against its PyTorch model; `error` (and no `path`) when the
    format could not express the model. The numbers are None then."""

    path: Optional[str]
    format: str
    error: Optional[str] = None
    size_mb: Optional[float] = None
    checked_samples: Optional[int] = None  # test inputs compared
    max_abs_diff: Optional[float] = None  # of the logits
    top1_agreement: Optional[float] = None
    test_acc_exported: Optional[float] = None  # on the checked inputs
    test_acc_pytorch: Optional[float] = None
    latency_batch_size: Optional[int] = None
    latency_ms_pytorch: Optional[float] = None
    latency_ms_exported: Optional[float] = None
    export_seconds: Optional[float] = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> "ExportResult":
        return cls(**{item.name: row.get(item.name) for item in fields(cls)})


Exports = dict[str, dict[str, ExportResult]]  # phase -> format -> its file's check


@dataclass
class RunProgress:
    """What a run has produced so far; summary.json is made from it however the run ends (completed or not)."""

    phases: dict[str, PhaseSummary] = field(default_factory=dict)  # in the order they finished
    dataset: Optional[DatasetInfo] = None
    device: Optional[str] = None
    export: Exports = field(default_factory=dict)


@dataclass
class RunSummary:
    """summary.json: how the run ended, what it trained, and where everything is."""

    status: str  # completed, failed or interrupted (a sweep's failed job before training: failed too)
    run_dir: str
    seed: Optional[int]
    overrides: list[str]
    phases: dict[str, PhaseSummary]
    error: Optional[str] = None
    device: Optional[str] = None
    dataset: Optional[DatasetInfo] = None
    started: Optional[str] = None
    finished: Optional[str] = None
    versions: Optional[dict[str, str]] = None
    export: Exports = field(default_factory=dict)  # export=[...] / kdrun export: left out of the JSON when empty

    @property
    def gap_recovered(self) -> Optional[float]:
        return gap_recovered(self.phases)

    def setting(self, key: str) -> Any:
        """The distilled phase's method, T or alpha; for a run that never got there, the override that set it."""
        distilled = self.phases.get("distilled")
        if distilled is not None and getattr(distilled, key) is not None:
            return getattr(distilled, key)
        for item in self.overrides:
            name, _, value = item.partition("=")
            if name == key:
                return value
        return None

    def to_json(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"status": self.status}
        if self.error:
            summary["error"] = self.error
        summary["run_dir"] = self.run_dir
        if self.device is not None:
            summary["device"] = self.device
        summary.update(seed=self.seed, overrides=list(self.overrides))
        if self.dataset is not None:
            summary["dataset"] = self.dataset.to_json()
        summary["phases"] = {name: phase.to_json() for name, phase in self.phases.items()}
        summary["gap_recovered"] = self.gap_recovered
        if self.export:
            summary["export"] = {phase: {name: check.to_json() for name, check in by_format.items()}
                                 for phase, by_format in self.export.items()}
        for key in ("started", "finished", "versions"):
            if getattr(self, key) is not None:
                summary[key] = getattr(self, key)
        return summary

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunSummary":
        """Parse a summary; missing keys (a failed job's short summary, older files) become None/empty.

        Raises:
            ValueError: when the content is not a summary at all (not an object, phases not rows).
        """
        if not isinstance(data, dict) or not isinstance(data.get("phases", {}), dict):
            raise ValueError("not a kdrun summary (expected a JSON object with 'phases')")
        phases = data.get("phases", {})
        if not all(isinstance(row, dict) for row in phases.values()):
            raise ValueError("not a kdrun summary (a phase is not an object)")
        dataset, export = data.get("dataset"), data.get("export")
        return cls(
            status=data.get("status", "unknown"), run_dir=data.get("run_dir", ""), seed=data.get("seed"),
            overrides=list(data.get("overrides", [])), phases={name: PhaseSummary.from_json(row) for name, row in phases.items()},
            error=data.get("error"), device=data.get("device"),
            dataset=_dataset_info(dataset),
            started=data.get("started"), finished=data.get("finished"), versions=data.get("versions"),
            export=_exports(export) if isinstance(export, dict) else {},
        )


def _dataset_info(data: Any) -> Optional[DatasetInfo]:
    if not isinstance(data, dict) or "name" not in data:
        return None
    return DatasetInfo(**{item.name: data.get(item.name) for item in fields(DatasetInfo)})


def _exports(data: dict[str, Any]) -> Exports:
    return {phase: {name: ExportResult.from_json(check) for name, check in by_format.items() if isinstance(check, dict)}
            for phase, by_format in data.items() if isinstance(by_format, dict)}


def gap_recovered(phases: dict[str, PhaseSummary]) -> Optional[float]:
    """(distilled - independent) / (teacher - independent): 1 = the whole teacher-student gap closed.

    None when a phase is missing or the teacher is no better than the independent student.
    """
    if not all(name in phases for name in PHASES):
        return None
    teacher, independent, distilled = (phases[name].test_acc for name in PHASES)
    gap = teacher - independent
    return (distilled - independent) / gap if gap > 0 else None


AnySummary = Union[RunSummary, DiffusionSummary]  # `kdrun train` runs, `kdrun diffusion` runs ("kind": "diffusion")


def write_summary(run_dir: Path, summary: AnySummary) -> None:
    """<run_dir>/summary.json, atomically: a reader sees the previous state or this one, never half."""
    from kdrun.files import write_json_atomic

    write_json_atomic(run_dir / SUMMARY_FILE, summary.to_json())


def read_summary(path: Path) -> AnySummary:
    """A summary.json (or the run dir holding one): a DiffusionSummary for `kdrun diffusion` runs, else a RunSummary.

    Raises:
        OSError: unreadable file. ValueError: not JSON, or not a kdrun summary.
    """
    path = path / SUMMARY_FILE if path.is_dir() else path
    data = json.loads(path.read_text())
    return DiffusionSummary.from_json(data) if is_diffusion_summary(data) else RunSummary.from_json(data)

"""What a `kdrun diffusion` run produces, as typed objects: metrics lines, table rows, its summary.

The diffusion counterpart of kdrun/results.py, which reads and writes every summary.json (it
picks `DiffusionSummary` by the file's "kind": "diffusion"). The rows are one per number of
sampling steps (N, N/2, ..., target): the teacher sampled with DDIM at that many steps (the
baseline) and the distilled student. Ground floor, no torch: `kdrun report` reads these runs without it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

KIND = "diffusion"
SAMPLERS = ("teacher_ddim", "distilled")


@dataclass
class Evaluation:
    """One metrics.jsonl line: the FID of one sampler at one step count (mean over noise seeds)."""

    sampler: str                 # teacher_ddim | distilled
    steps: int
    fid: float
    fid_std: Optional[float]     # over fid.noise_seeds sample sets (None for one)
    fid_per_seed: list[float]
    samples: int                 # generated images per FID
    seconds_per_1000: float      # sampling wall time per 1,000 images (noisy on shared CPUs)
    grid: str                    # PNG of the first samples, relative to the run dir
    phase: str = "evaluation"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PhaseRecord:
    """One metrics.jsonl line per trained phase: the teacher, or one distillation round."""

    phase: str                   # teacher | distill
    round: int                   # 0 for the teacher
    steps: int                   # sampling steps of the model this phase produced
    train_steps: int
    loss: dict[str, float]       # mean per term over the phase
    loss_last: dict[str, float]  # mean over its last 10% of steps
    lr: float
    ema_decay: float
    samples_per_s: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StepRow:
    """One row of the final table."""

    steps: int
    teacher_fid: Optional[float] = None
    teacher_fid_std: Optional[float] = None
    distilled_fid: Optional[float] = None
    distilled_fid_std: Optional[float] = None
    teacher_seconds_per_1000: Optional[float] = None
    distilled_seconds_per_1000: Optional[float] = None
    teacher_grid: Optional[str] = None
    distilled_grid: Optional[str] = None

    def add(self, evaluation: Evaluation) -> None:
        prefix = "teacher" if evaluation.sampler == "teacher_ddim" else "distilled"
        setattr(self, f"{prefix}_fid", evaluation.fid)
        setattr(self, f"{prefix}_fid_std", evaluation.fid_std)
        setattr(self, f"{prefix}_seconds_per_1000", evaluation.seconds_per_1000)
        setattr(self, f"{prefix}_grid", evaluation.grid)


def rows_from(steps: list[int], evaluations: list[Evaluation]) -> list[StepRow]:
    """The table: one row per step count, in the run's order (N first)."""
    rows = {count: StepRow(count) for count in steps}
    for evaluation in evaluations:
        if evaluation.steps in rows:
            rows[evaluation.steps].add(evaluation)
    return [rows[count] for count in steps]


@dataclass
class DiffusionSummary:
    """summary.json of a diffusion run: written last and atomically; `status` says how the run ended."""

    status: str
    run_dir: str
    seed: int
    overrides: list[str]
    device: str = ""
    error: Optional[str] = None
    dataset: dict[str, Any] = field(default_factory=dict)
    teacher: dict[str, Any] = field(default_factory=dict)     # source, sampling_steps, params, seconds, weights
    fid: dict[str, Any] = field(default_factory=dict)         # kind, label, samples, noise_seeds, reference, floor
    rounds: list[PhaseRecord] = field(default_factory=list)
    rows: list[StepRow] = field(default_factory=list)
    plot: Optional[str] = None
    started: str = ""
    finished: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    kind: str = KIND

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.error is None:
            data.pop("error")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DiffusionSummary":
        """Parse what `to_json` wrote; keys it does not know are ignored.

        Raises:
            ValueError: when rounds or rows are not what a diffusion run writes.
        """
        known = {item.name for item in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        try:
            values["rounds"] = [PhaseRecord(**record) for record in data.get("rounds", [])]
            values["rows"] = [StepRow(**row) for row in data.get("rows", [])]
            return cls(**values)
        except TypeError as error:
            raise ValueError(f"not a kdrun diffusion summary ({error})") from None


def is_diffusion_summary(data: Any) -> bool:
    return isinstance(data, dict) and data.get("kind") == KIND

"""A run's settings as plain typed values: what the training core receives instead of the Hydra config.

kdrun/training/from_config.py builds a `RunSettings` from the composed DictConfig (the one boundary);
everything below it (pipeline, sources, resume, compression) reads these fields. Option dicts stay
dicts where a registry checks them by name (dataset, model and method options, compression stages).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class ModelSpec:
    """An architecture from the teacher/student group: registry name and its options."""

    name: str
    options: dict[str, Any]  # its cache identity: kdrun.models.identity.architecture_identity


@dataclass(frozen=True)
class TrainerSettings:
    """trainer.*: how phases are run (precision, speed switches, evaluation batches, checkpoints, logging)."""

    eval_batch_size: Any  # "auto" or an int
    progress: bool
    cache_teacher_logits: bool
    precision: str
    channels_last: Any
    compile: bool
    fast_dropout: Any
    flush_denormal: Any
    tensorboard: Any
    threads: Any
    checkpoint_seconds: float


@dataclass(frozen=True)
class CompressionSettings:
    """compress=[...] and compression.*: the stages after distillation, in order, and their options."""

    stages: list[str] = field(default_factory=list)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per stage name
    measure_batch_size: Optional[int] = None  # None: trainer.eval_batch_size
    measure_repeats: int = 20


@dataclass(frozen=True)
class ExportSettings:
    """export=[...] and export_check.*: the formats written at the end of a run, and how each file is checked."""

    formats: list[str] = field(default_factory=list)
    check_samples: int = 1000  # test inputs compared between PyTorch and the file
    latency_batch_size: int = 1
    latency_repeats: int = 50


@dataclass(frozen=True)
class TrackingSettings:
    """track=[...] and tracking.*: the experiment trackers beside TensorBoard (kdrun/tracking/)."""

    backends: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # tracking.* (experiment, and a node per backend)
    params: dict[str, Any] = field(default_factory=dict)  # the resolved config, nested: what a tracker logs as params


@dataclass(frozen=True)
class RunSettings:
    """Everything one run needs to know; see conf/config.yaml for the meaning of each key."""

    seed: int
    device: str
    T: float
    alpha: float
    teacher_epochs: int
    student_epochs: int
    batch_size: int
    independent: bool
    cache_dir: Path
    resume: bool
    dataset: dict[str, Any]  # the dataset group, name included (kdrun/data reads it)
    teacher: ModelSpec
    teacher_checkpoint: Optional[Path]  # teacher.checkpoint: load instead of train
    student: ModelSpec
    method: dict[str, Any]  # the method group, name included (kdrun/methods reads it)
    make_optimizer: Callable
    make_scheduler: Optional[Callable]
    optimizer: dict[str, Any]  # the groups as configured: they are part of a trained model's cache identity
    scheduler: Optional[dict[str, Any]]
    trainer: TrainerSettings
    compression: CompressionSettings
    export: ExportSettings
    tracking: TrackingSettings
    recorded_config: dict[str, Any]  # flat resolved config a resume must match (kdrun/training/resume.py)
    teacher_augment: Any = None  # teacher.augment, resolved: the teacher phase's augmentation spec (default: the dataset's)

    @property
    def method_name(self) -> str:
        return self.method["name"]

    @property
    def augment(self) -> Any:
        """The students' augmentation spec (dataset.augment): a name, a {name: ..., options} mapping, or None."""
        return self.dataset.get("augment")

"""The typed schema of `kdrun diffusion`'s config (conf/diffusion.yaml) and its range checks.

Registered in Hydra's ConfigStore and listed first in conf/diffusion.yaml, so wrong types and
typos fail at composition (also under --cfg job); `validate` checks what types cannot express,
before anything is trained or written. No torch at import time: `kdrun diffusion --help` and
`--cfg job` compose the config without it (tests/test_startup.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING, DictConfig

from kdrun.config import reject_unknown_keys
from kdrun.errors import ConfigError

SCHEMA_NAME = "kdrun_diffusion_schema"
FEATURES = ("auto", "classifier", "inception")


@dataclass
class ScheduleSchema:
    logsnr_min: float = MISSING
    logsnr_max: float = MISSING


@dataclass
class NetworkSchema:
    name: str = MISSING
    channels: List[int] = MISSING
    attention: List[bool] = MISSING
    layers_per_block: int = MISSING
    norm_groups: int = MISSING
    dropout: float = MISSING
    checkpoint: Optional[str] = None  # teacher weights from a file instead of training


@dataclass
class PhaseSchema:
    train_steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    warmup_steps: int = MISSING
    anneal: bool = MISSING
    ema_decay: float = MISSING
    grad_clip: float = MISSING


@dataclass
class TeacherSchema(PhaseSchema):
    sampling_steps: int = MISSING


@dataclass
class DistillSchema(PhaseSchema):
    target_steps: int = MISSING


@dataclass
class ClassifierTrainingSchema:
    epochs: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING


@dataclass
class FidSchema:
    samples: int = MISSING
    noise_seeds: int = MISSING
    batch_size: int = MISSING
    features: str = MISSING
    inception_weights: Optional[str] = None
    classifier: Any = MISSING  # {name: <model registry name>, <model options>, checkpoint: null}
    classifier_training: ClassifierTrainingSchema = field(default_factory=ClassifierTrainingSchema)


@dataclass
class DiffusionTrainerSchema:
    progress: bool = MISSING
    threads: Any = MISSING  # auto | int >= 1
    checkpoint_seconds: float = MISSING
    log_every: int = MISSING


@dataclass
class DiffusionSchema:
    dataset: Any = MISSING
    seed: int = MISSING
    device: str = MISSING
    cache_dir: str = MISSING
    resume: bool = MISSING
    flip: bool = MISSING
    grid_samples: int = MISSING
    schedule: ScheduleSchema = field(default_factory=ScheduleSchema)
    network: NetworkSchema = field(default_factory=NetworkSchema)
    teacher: TeacherSchema = field(default_factory=TeacherSchema)
    distill: DistillSchema = field(default_factory=DistillSchema)
    fid: FidSchema = field(default_factory=FidSchema)
    trainer: DiffusionTrainerSchema = field(default_factory=DiffusionTrainerSchema)


def optional_path(value: Optional[str]) -> Optional[Path]:
    """A config path value as an absolute Path, or None when unset."""
    return None if value in (None, "") else Path(str(value)).expanduser().resolve()


def register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=DiffusionSchema)


def validate(cfg: DictConfig) -> list[int]:
    """Range checks; returns the step counts of the run, [N, N/2, ..., target].

    Raises:
        ConfigError: naming the key, its value and what would be valid.
    """
    from kdrun.diffusion.fid import INCEPTION_URL
    from kdrun.diffusion.schedule import halving_steps

    reject_unknown_keys(cfg, DiffusionSchema, "diffusion")
    steps = halving_steps(cfg.teacher.sampling_steps, cfg.distill.target_steps)
    for phase in ("teacher", "distill"):
        options = cfg[phase]
        _at_least(f"{phase}.train_steps", options.train_steps, 1)
        _at_least(f"{phase}.batch_size", options.batch_size, 1)
        _at_least(f"{phase}.warmup_steps", options.warmup_steps, 0)
        _check(options.lr > 0, f"{phase}.lr={options.lr} must be > 0", "try 0.0002")
        _check(0 <= options.ema_decay < 1, f"{phase}.ema_decay={options.ema_decay} is outside [0, 1)", "0 disables the EMA; try 0.999")
        _check(options.grad_clip >= 0, f"{phase}.grad_clip={options.grad_clip} must be >= 0", "0 disables clipping")
    fid = cfg.fid
    _at_least("fid.samples", fid.samples, 2)
    _at_least("fid.noise_seeds", fid.noise_seeds, 1)
    _at_least("fid.batch_size", fid.batch_size, 1)
    _check(fid.features in FEATURES, f"fid.features={fid.features} is not one of {', '.join(FEATURES)}",
           "auto = Inception when fid.inception_weights is set, else the classifier's features")
    _check(fid.features != "classifier" or not fid.inception_weights,
           "fid.inception_weights is set but fid.features=classifier", "drop one of them")
    weights = optional_path(fid.inception_weights)
    _check(weights is None or weights.is_file(), f"fid.inception_weights={weights} does not exist",
           f"download {INCEPTION_URL} (torch-fidelity's Inception-v3) and pass its path")
    _at_least("fid.classifier_training.epochs", fid.classifier_training.epochs, 1)
    _at_least("fid.classifier_training.batch_size", fid.classifier_training.batch_size, 1)
    _check(fid.classifier_training.lr > 0, f"fid.classifier_training.lr={fid.classifier_training.lr} must be > 0", "try 0.001")
    _check(isinstance(fid.classifier, DictConfig) and "name" in fid.classifier, "fid.classifier has no 'name'",
           "e.g. fid.classifier.name=small_cnn")
    _check(1 <= cfg.grid_samples <= fid.samples, f"grid_samples={cfg.grid_samples} must be in [1, fid.samples={fid.samples}]",
           "the grids show the first FID samples")
    _check(cfg.trainer.checkpoint_seconds >= 0, f"trainer.checkpoint_seconds={cfg.trainer.checkpoint_seconds} must be >= 0",
           "0 writes a checkpoint at every read-out")
    _at_least("trainer.log_every", cfg.trainer.log_every, 1)
    threads = cfg.trainer.threads
    _check(threads == "auto" or (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1),
           f"trainer.threads={threads} must be auto or an integer >= 1", "try trainer.threads=auto")
    return steps


def _at_least(key: str, value: int, minimum: int) -> None:
    _check(value >= minimum, f"{key}={value} must be >= {minimum}", f"set {key} to {minimum} or more")


def _check(condition: bool, message: str, hint: str) -> None:
    if not condition:
        raise ConfigError(message, hint)


"""The typed root schema, where conf/ lives, and the range checks a schema cannot express.

The schema is registered in Hydra's ConfigStore and listed first in conf/config.yaml, so wrong
types (`T=abc`) and typos in root keys fail at composition, also under `--cfg job`. Group contents
(dataset, teacher, student, method) are free-form here: each registry checks its own options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from kdrun.errors import ConfigError

SCHEMA_NAME = "kdrun_schema"


@dataclass
class TrainerSchema:
    eval_batch_size: Any = MISSING  # auto | int >= 1
    progress: bool = MISSING
    cache_teacher_logits: bool = MISSING
    precision: str = MISSING
    channels_last: Any = MISSING
    compile: bool = MISSING
    fast_dropout: Any = MISSING  # auto | true | false
    flush_denormal: Any = MISSING  # auto | true | false
    tensorboard: Any = MISSING  # auto | true | false
    threads: Any = MISSING  # auto | int >= 1
    checkpoint_seconds: float = MISSING  # >= 0; 0 = a resume checkpoint after every epoch


@dataclass
class PruneSchema:
    amount: float = MISSING
    structure: str = MISSING
    steps: int = MISSING
    finetune_epochs: int = MISSING


@dataclass
class QuantizeSchema:
    scheme: str = MISSING
    calibration_batches: int = MISSING
    qat_epochs: int = MISSING


@dataclass
class MeasureSchema:
    batch_size: Optional[int] = None
    repeats: int = MISSING


@dataclass
class CompressionSchema:
    """Options of the compression stages (kdrun/compression/); checked by each stage."""

    prune: PruneSchema = field(default_factory=PruneSchema)
    quantize: QuantizeSchema = field(default_factory=QuantizeSchema)
    measure: MeasureSchema = field(default_factory=MeasureSchema)


@dataclass
class ExportCheckSchema:
    """How an exported file is checked against PyTorch (kdrun/export/)."""

    samples: int = MISSING
    latency_batch_size: int = MISSING
    latency_repeats: int = MISSING


@dataclass
class MlflowSchema:
    uri: str = MISSING


@dataclass
class WandbSchema:
    project: str = MISSING
    mode: str = MISSING
    dir: Optional[str] = None
    entity: Optional[str] = None


@dataclass
class TrackingSchema:
    """Options of the experiment trackers (kdrun/tracking/); `track` picks which run."""

    experiment: Optional[str] = None
    mlflow: MlflowSchema = field(default_factory=MlflowSchema)
    wandb: WandbSchema = field(default_factory=WandbSchema)


@dataclass
class RootSchema:
    dataset: Any = MISSING
    teacher: Any = MISSING
    student: Any = MISSING
    method: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = None
    T: float = MISSING
    alpha: float = MISSING
    seed: int = MISSING
    device: str = MISSING
    teacher_epochs: int = MISSING
    student_epochs: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    independent: bool = MISSING
    cache_dir: str = MISSING
    resume: bool = MISSING
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    compress: List[str] = field(default_factory=list)
    compression: CompressionSchema = field(default_factory=CompressionSchema)
    export: List[str] = field(default_factory=list)
    export_check: ExportCheckSchema = field(default_factory=ExportCheckSchema)
    track: List[str] = field(default_factory=list)
    tracking: TrackingSchema = field(default_factory=TrackingSchema)


def register_schema() -> None:
    """Put the root schema into Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=RootSchema)


def config_dir() -> Path:
    """Absolute path of conf/: shipped inside the wheel as kdrun/conf, else the repo's top-level conf/."""
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "conf"


def validate(cfg: DictConfig) -> None:
    """Reject values that are well-typed but meaningless, before anything is trained or written.

    Raises:
        ConfigError: naming the key, the value and the valid range.
    """
    reject_unknown_keys(cfg)
    _check(cfg.T > 0, f"T={cfg.T} must be > 0", "the temperature divides the logits; try T=4")
    _check(0 <= cfg.alpha <= 1, f"alpha={cfg.alpha} is outside [0, 1]", "alpha is a weight; try alpha=0.5")
    for key in ("teacher_epochs", "student_epochs"):
        _check(cfg[key] >= 0, f"{key}={cfg[key]} is negative", f"use {key}=0 or more")
    _check(cfg.batch_size >= 1, f"batch_size={cfg.batch_size} must be >= 1", "try batch_size=32")
    for key in ("eval_batch_size", "threads"):
        _check_auto_or_count(f"trainer.{key}", cfg.trainer[key])
    _check(cfg.lr > 0, f"lr={cfg.lr} must be > 0", "try lr=0.001")
    seconds = cfg.trainer.checkpoint_seconds
    _check(seconds >= 0, f"trainer.checkpoint_seconds={seconds} must be >= 0", "0 writes a checkpoint after every epoch")
    measure = cfg.compression.measure
    _check(measure.repeats >= 1, f"compression.measure.repeats={measure.repeats} must be >= 1", "try 20")
    _check(
        measure.batch_size is None or measure.batch_size >= 1,
        f"compression.measure.batch_size={measure.batch_size} must be >= 1",
        "or null for trainer.eval_batch_size",
    )
    for group in ("dataset", "teacher", "student", "method"):
        _check(
            isinstance(cfg[group], DictConfig) and "name" in cfg[group],
            f"config group '{group}' has no 'name'",
            f"pick one with {group}=<option>",
        )


def _check(condition: bool, message: str, hint: str) -> None:
    if not condition:
        raise ConfigError(message, hint)


def _check_auto_or_count(key: str, value: Any) -> None:
    """Keys typed `Any` so that they accept `auto`; anything else must be a whole number >= 1."""
    is_count = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    _check(value == "auto" or is_count, f"{key}={value} must be auto or an integer >= 1", f"try {key}=auto")


def reject_unknown_keys(cfg: DictConfig, schema: type = RootSchema, command: str = "train") -> None:
    """`+foo=1` slips past the composed schema; merging into the schema again catches it."""
    from omegaconf.errors import ConfigKeyError

    # a plain container: merged as typed nodes, nested extra keys (`+trainer.foo=1`) would pass silently
    plain = OmegaConf.create(OmegaConf.to_container(OmegaConf.masked_copy(cfg, [key for key in cfg.keys() if key != "hydra"])))
    try:
        OmegaConf.merge(OmegaConf.structured(schema), plain)
    except ConfigKeyError as error:
        key = getattr(error, "full_key", None) or getattr(error, "key", None) or str(error).split("'")[1]
        raise ConfigError(f"unknown config key '{key}'", f"see `kdrun {command} --cfg job` for the valid keys") from None


"""The one boundary where the Hydra config ends: a composed DictConfig in, `RunSettings` out.

Everything a run builds later (data, models, optimizer, resume checks, compression stages) reads the
plain values made here. `kdrun bench` uses the same functions, so its reference gets exactly the data
split and architectures a run gets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdrun.config import validate
from kdrun.data import DATASETS, DataSplits, make_splits
from kdrun.data.base import override_normalisation
from kdrun.errors import ConfigError
from kdrun.models import build_model
from kdrun.training.settings import CompressionSettings, ExportSettings, ModelSpec, RunSettings, TrackingSettings, TrainerSettings

GENERIC_DATASET_KEYS = ("name", "val_fraction", "max_train_samples", "augment", "mean", "std")
NOT_RECORDED = ("resume", "trainer.progress", "trainer.checkpoint_seconds")  # may differ between a first start and a resume


def settings_from_config(cfg: DictConfig) -> RunSettings:
    """Check the config (kdrun.config.validate) and turn it into plain typed settings.

    Raises:
        ConfigError: a value out of range, an unknown key, or an optimizer/scheduler that cannot be built.
    """
    validate(cfg)
    teacher = plain(cfg.teacher)
    checkpoint = teacher.pop("checkpoint", None)
    teacher_augment = teacher.pop("augment", None)  # how the teacher phase trains, not an architecture option
    dataset = plain(cfg.dataset)
    compression = plain(cfg.compression)
    measure = compression.pop("measure")
    return RunSettings(
        seed=cfg.seed, device=cfg.device, T=cfg.T, alpha=cfg.alpha, teacher_epochs=cfg.teacher_epochs,
        student_epochs=cfg.student_epochs, batch_size=cfg.batch_size, independent=cfg.independent,
        cache_dir=Path(cfg.cache_dir).expanduser().resolve(), resume=bool(cfg.resume), dataset=dataset,
        teacher=model_spec(teacher), teacher_checkpoint=Path(checkpoint).expanduser().resolve() if checkpoint else None,
        student=model_spec(plain(cfg.student)), method=plain(cfg.method),
        make_optimizer=make_factory(cfg.optimizer, "optimizer"), make_scheduler=make_factory(cfg.scheduler, "scheduler"),
        optimizer=plain(cfg.optimizer), scheduler=plain(cfg.scheduler) if cfg.scheduler is not None else None,
        trainer=TrainerSettings(**plain(cfg.trainer)),
        compression=CompressionSettings(list(cfg.compress), compression, measure["batch_size"], measure["repeats"]),
        export=export_settings(cfg), tracking=tracking_settings(cfg), recorded_config=recorded_config(cfg),
        teacher_augment=dataset.get("augment") if teacher_augment is None else teacher_augment,
    )


def export_settings(cfg: DictConfig, formats: Optional[list[str]] = None) -> ExportSettings:
    """export=[...] (or `formats`, from `kdrun export --format`) and export_check.*."""
    check = cfg.export_check
    return ExportSettings(list(cfg.export if formats is None else formats), check.samples, check.latency_batch_size, check.latency_repeats)


def tracking_settings(cfg: DictConfig) -> TrackingSettings:
    """track=[...] and tracking.*; a tracker logs the whole resolved config as the run's params."""
    return TrackingSettings(list(cfg.track), plain(cfg.tracking), resolved(cfg))


def model_spec(options: dict[str, Any]) -> ModelSpec:
    options = dict(options)
    options.pop("checkpoint", None)  # where a teacher's weights come from, not an architecture option
    return ModelSpec(options.pop("name"), options)


def build_architecture(spec: ModelSpec, data: DataSplits) -> nn.Module:
    """The architecture `spec` names, sized for `data`, as torch builds it (CPU, plain modules: no speed settings)."""
    return build_model(spec.name, data.input_shape, data.num_classes, **spec.options)


def load_data(dataset: dict[str, Any], seed: int) -> DataSplits:
    """The dataset group's splits: its builder's train/test, then the generic validation split and trims."""
    options = dict(dataset)
    generic = {key: options.pop(key, None) for key in GENERIC_DATASET_KEYS}
    loaded = DATASETS.build(generic["name"], seed, **options)
    splits = make_splits(loaded, generic["val_fraction"] or 0.0, generic["max_train_samples"], seed)
    return override_normalisation(splits, generic["mean"], generic["std"])


def make_factory(node: Any, what: str) -> Optional[Callable]:
    """Instantiate a `_partial_` optimizer/scheduler config into a factory; None stays None."""
    if node is None:
        return None
    try:
        return instantiate(node)
    except Exception as error:  # noqa: BLE001 - Hydra wraps import and argument errors alike
        reason = " ".join(str(error).split())[:200]
        raise ConfigError(f"cannot build the {what} from its config ({reason})", f"check `{what}` in --cfg job") from None


def plain(node: Any) -> dict[str, Any]:
    """A config group as a plain, resolved dict."""
    return dict(OmegaConf.to_container(node, resolve=True))


def recorded_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as flat JSON-able values, without the keys a resume may change."""
    return {key: value for key, value in _flatten(resolved(cfg)) if key not in NOT_RECORDED}


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The whole config as plain nested values, without Hydra's own node."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    return config


def _flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node

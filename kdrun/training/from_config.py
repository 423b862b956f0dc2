"""Objects from config groups: the boundary below which no DictConfig travels.

The pipeline builds everything through these; `kdrun bench` uses them too, so its reference gets
exactly the data split and architectures a run gets.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdrun.data import DATASETS, DataSplits, make_splits
from kdrun.data.base import override_normalisation
from kdrun.errors import ConfigError
from kdrun.models import build_model

GENERIC_DATASET_KEYS = ("name", "val_fraction", "max_train_samples", "augment", "mean", "std")


def model_from_group(model_cfg: DictConfig, data: DataSplits) -> nn.Module:
    """The architecture a teacher/student config group names, sized for `data`, as torch builds it (CPU,
    plain modules: no speed settings)."""
    options = plain(model_cfg)
    options.pop("checkpoint", None)  # where a teacher's weights come from, not an architecture option
    return build_model(options.pop("name"), data.input_shape, data.num_classes, **options)


def load_data(dataset_cfg: DictConfig, seed: int) -> DataSplits:
    options = plain(dataset_cfg)
    generic = {key: options.pop(key, None) for key in GENERIC_DATASET_KEYS}
    loaded = DATASETS.build(generic["name"], seed, **options)
    splits = make_splits(loaded, generic["val_fraction"] or 0.0, generic["max_train_samples"], seed)
    return override_normalisation(splits, generic["mean"], generic["std"])


def make_factory(node: Any, what: str):
    """Instantiate a `_partial_` optimizer/scheduler config into a factory; None stays None."""
    if node is None:
        return None
    try:
        return instantiate(node)
    except Exception as error:  # noqa: BLE001 - Hydra wraps import and argument errors alike
        reason = " ".join(str(error).split())[:200]
        raise ConfigError(f"cannot build the {what} from its config ({reason})", f"check `{what}` in --cfg job") from None


def plain(node: Any) -> dict[str, Any]:
    """A config group as a plain, resolved dict (the boundary below which no DictConfig travels)."""
    return dict(OmegaConf.to_container(node, resolve=True))

"""Any importable nn.Module as teacher or student: `teacher=custom teacher._target_=pkg.mod.Net teacher.depth=3`.

The target (a class or a factory function) is built by Hydra's `instantiate` from `_target_` and the
user's keys, so nested `_target_`s work as everywhere in Hydra. kdrun fills the parameters that the
data determines, when the target's signature names them (DATASET_PARAMETERS); a user value for one
of them must agree with the data. The model must map a batch (N, C, H, W) to logits (N, classes):
one probe forward checks that before any training, so a misfit is a one-line error, not a traceback
inside the first epoch. Layers are tapped by their `named_modules()` paths, as for built-in models.
"""

from __future__ import annotations

import importlib
import inspect
import math
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from kdrun.errors import ConfigError, exception_line
from kdrun.files import load_weights, sha256_of
from kdrun.models.registry import MODELS

Shape = tuple[int, int, int]


def _image_size(shape: Shape) -> Any:
    return shape[1] if shape[1] == shape[2] else (shape[1], shape[2])


# parameter name -> its value for data of input shape (C, H, W) and `classes` classes
DATASET_PARAMETERS: dict[str, Callable[[Shape, int], Any]] = {
    "num_classes": lambda shape, classes: classes,
    "in_channels": lambda shape, classes: shape[0],
    "in_chans": lambda shape, classes: shape[0],  # timm's spelling
    "input_shape": lambda shape, classes: tuple(shape),
    "image_size": lambda shape, classes: _image_size(shape),  # H when square, else (H, W)
    "img_size": lambda shape, classes: _image_size(shape),  # timm's spelling
    "in_features": lambda shape, classes: math.prod(shape),  # flattened input, for MLPs
}


def locate(target: str) -> Any:
    """The object a dotted path names (`pkg.module.Class`, `pkg.module.function`), importing what it needs.

    Raises:
        ConfigError: the module cannot be imported, fails while importing, or lacks the attribute.
    """
    parts = str(target).split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"custom model _target_ '{target}' is not a dotted path", "give package.module.Class")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            found: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and (module_name == error.name or module_name.startswith(error.name + ".")):
                continue  # this prefix is not a module: try a shorter one
            raise ConfigError(f"importing {module_name} for custom model '{target}' failed ({exception_line(error)})",
                              "install the module it needs") from None
        except Exception as error:  # noqa: BLE001 - user code may raise anything while importing
            raise ConfigError(f"importing {module_name} for custom model '{target}' failed ({exception_line(error)})",
                              "fix the module") from None
        for attribute in parts[split:]:
            if not hasattr(found, attribute):
                raise ConfigError(f"custom model '{target}': {found.__name__} has no attribute '{attribute}'",
                                  "check the spelling of _target_")
            found = getattr(found, attribute)
        return found
    raise ConfigError(f"custom model '{target}' cannot be imported (no module {parts[0]})",
                      "put its package on PYTHONPATH or pip install it")


def dataset_arguments(factory: Any, input_shape: Shape, num_classes: int, given: dict[str, Any], what: str) -> dict[str, Any]:
    """The data-determined parameters the factory's signature names, checked against the user's values."""
    try:
        names = set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):  # builtins without a signature: the user passes everything
        return {}
    filled = {name: DATASET_PARAMETERS[name](input_shape, num_classes) for name in names & set(DATASET_PARAMETERS)}
    for name, value in filled.items():
        if name in given and _normalised(given[name]) != _normalised(value):
            raise ConfigError(f"{what}: {name}={given[name]} disagrees with the dataset ({name}={value})",
                              f"drop {name}: kdrun fills it from the dataset")
    return filled


def _normalised(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def instantiate_target(target: str, arguments: dict[str, Any], what: str) -> nn.Module:
    """Build `target(**arguments)` with Hydra's instantiate (nested `_target_`s included); one-line errors."""
    from hydra.utils import instantiate

    try:
        model = instantiate({"_target_": target, **arguments}, _convert_="all")
    except Exception as error:  # noqa: BLE001 - Hydra wraps whatever the user's constructor raised
        cause = error.__cause__ or error
        shown = ", ".join(f"{key}={value}" for key, value in sorted(arguments.items()))
        raise ConfigError(f"{what}({shown}) does not build ({exception_line(cause)})",
                          "check its arguments: kdrun passes the keys of the teacher/student config") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{what} returned a {type(model).__name__}, not a torch.nn.Module", "point _target_ at a module class or factory")
    return model


def probe(model: nn.Module, input_shape: Shape, num_classes: int, what: str) -> None:
    """One forward of a 2-sample batch: the model must accept the data and return (N, classes) logits."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(torch.zeros(2, *input_shape))
    except Exception as error:  # noqa: BLE001 - the user's forward may raise anything on the wrong shape
        raise ConfigError(f"{what} fails on a batch of shape (2, {', '.join(map(str, input_shape))}) ({exception_line(error)})",
                          "make it accept (N, C, H, W) inputs of this dataset; see its size options") from None
    finally:
        model.train(was_training)
    if not isinstance(output, torch.Tensor):
        raise ConfigError(f"{what} returns a {type(output).__name__}, not a logits tensor", "make forward return a (N, classes) tensor")
    if tuple(output.shape) != (2, num_classes):
        raise ConfigError(f"{what} maps a batch of 2 to shape {tuple(output.shape)}, expected (2, {num_classes}) for this dataset's classes",
                          "give it a num_classes parameter (kdrun fills it) or set its output size")


def load_optional_weights(model: nn.Module, weights: Optional[str], what: str) -> None:
    """Weights from a local safetensors file or a plain state_dict (torch.load with weights_only=True)."""
    if weights in (None, "", "none"):
        return
    load_weights(Path(str(weights)).expanduser().resolve(), model, f"{what} weights")


@MODELS.register("custom")
def build_custom(input_shape: Shape, num_classes: int, /, _target_: str = "???", weights: Optional[str] = None, **arguments: Any) -> nn.Module:
    """Any importable module class or factory, given the data's shape and classes where it asks for them."""
    if _target_ in (None, "", "???"):
        raise ConfigError("a custom model needs its _target_", "e.g. teacher=custom teacher._target_=mypkg.nets.MyNet")
    what = f"custom model {_target_}"
    factory = locate(_target_)
    if not callable(factory):
        raise ConfigError(f"{what} is a {type(factory).__name__}, not a class or function", "point _target_ at a module class or factory")
    filled = dataset_arguments(factory, input_shape, num_classes, arguments, what)
    model = instantiate_target(_target_, {**arguments, **filled}, what)
    load_optional_weights(model, weights, what)
    probe(model, input_shape, num_classes, what)
    return model


def custom_identity(options: dict[str, Any]) -> dict[str, Any]:
    """The sha256 of the file defining the target: edited code must not reuse a teacher cached from the old code."""
    target = locate(options.get("_target_", ""))
    try:
        source = inspect.getsourcefile(target) or inspect.getsourcefile(type(target))
    except TypeError:  # builtins have no source file
        source = None
    return {"source_sha256": sha256_of(Path(source))} if source and Path(source).is_file() else {}


build_custom.identity = custom_identity  # type: ignore[attr-defined]  (read by kdrun.models.identity)

"""Forward-hook taps on named layers: intermediate features for feature-based distillation.

Layers are module paths from `named_modules()` (e.g. "2" in an nn.Sequential, "features.3" in a
CNN), given in the method config. Hooks are always removed when the `with` block ends, even on errors.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from kdrun.errors import ConfigError


def find_layer(model: nn.Module, path: str, role: str) -> nn.Module:
    """The submodule at `path`, or a ConfigError listing similar valid paths."""
    modules = dict(model.named_modules())
    modules.pop("", None)  # the model itself: its output is the logits, not a feature
    path = str(path)
    if path in modules:
        return modules[path]
    names = list(modules)
    similar = difflib.get_close_matches(path, names, n=8, cutoff=0.3) or names[:20]
    raise ConfigError(
        f"{role} layer '{path}' does not exist in {type(model).__name__}",
        f"set method.{role}_layer to one of: {', '.join(similar)}",
    )


@contextmanager
def tapped(module: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record `module`'s output under key "feature" while the block runs; the hook is always removed."""
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        # a copy: a following in-place op (ReLU(inplace=True) after a Linear) would otherwise change it
        captured["feature"] = output.clone()

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def forward_with_feature(model: nn.Module, layer: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, feature) from ONE forward pass of `model`."""
    with tapped(layer) as captured:
        logits = model(inputs)
    if "feature" not in captured:
        raise ConfigError(
            f"layer {type(layer).__name__} was not called in {type(model).__name__}'s forward",
            "pick a layer that the forward pass uses",
        )
    return logits, captured["feature"]

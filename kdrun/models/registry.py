"""The model registry: `teacher=<name>` / `student=<name>` pick a builder.

A builder is called as builder(input_shape, num_classes, **options): shape and classes come from
the dataset, never from a model config, so one model config works on every dataset.
"""

from __future__ import annotations

import torch
from torch import nn

from kdrun.registry import Registry

MODELS: Registry = Registry("model")


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, /, **options) -> nn.Module:
    return MODELS.build(name, input_shape, num_classes, **options)


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def check_output(model: nn.Module, input_shape: tuple[int, int, int], num_classes: int) -> None:
    """Fail early, with the shapes, if a model does not map this data to this many classes."""
    from kdrun.errors import ConfigError

    was_training = model.training
    model.eval()
    with torch.no_grad():
        output = model(torch.zeros(2, *input_shape))
    model.train(was_training)
    if tuple(output.shape) != (2, num_classes):
        raise ConfigError(
            f"model outputs shape {tuple(output.shape[1:])} for input {input_shape}, expected ({num_classes},)",
            "pick a model that fits this dataset",
        )

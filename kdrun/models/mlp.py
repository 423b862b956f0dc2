"""Multi-layer perceptron: the R4 teacher and student (ReLU, dropout after every hidden layer)."""

from __future__ import annotations

import math
from typing import Sequence

from torch import nn

from kdrun.errors import ConfigError
from kdrun.models.registry import MODELS


def classifier_layers(in_features: int, hidden: Sequence[int], num_classes: int, dropout: float) -> list[nn.Module]:
    """[Linear -> ReLU -> Dropout] per hidden width, then Linear to classes (also LeNet-5's head).

    Without dropout an Identity takes the Dropout's place, so layer paths do not depend on it: in an
    MLP, "5" (the feature methods' default tap) is the second hidden ReLU either way.
    """
    layers: list[nn.Module] = []
    width = in_features
    for hidden_width in hidden:
        layers += [nn.Linear(width, hidden_width), nn.ReLU(inplace=True), nn.Dropout(dropout) if dropout > 0 else nn.Identity()]
        width = hidden_width
    layers.append(nn.Linear(width, num_classes))
    return layers


class MLP(nn.Sequential):
    """Flatten -> [Linear -> ReLU -> Dropout] per hidden width -> Linear to classes."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, dropout: float) -> None:
        super().__init__(nn.Flatten(), *classifier_layers(in_features, hidden, num_classes, dropout))


@MODELS.register("mlp")
def mlp(input_shape: tuple[int, int, int], num_classes: int, hidden: Sequence[int] = (1200, 1200), dropout: float = 0.0) -> MLP:
    """An MLP over the flattened input; `hidden` lists the hidden widths (empty = linear model)."""
    widths = [int(width) for width in hidden]
    if any(width < 1 for width in widths):
        raise ConfigError(f"mlp hidden widths {widths} must all be >= 1", "e.g. hidden=[1200,1200]")
    if not 0 <= dropout < 1:
        raise ConfigError(f"mlp dropout={dropout} is outside [0, 1)", "e.g. dropout=0.5")
    return MLP(math.prod(input_shape), widths, num_classes, dropout)

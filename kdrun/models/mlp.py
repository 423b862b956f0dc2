"""Multi-layer perceptron: the R4 teacher and student (ReLU, dropout after every hidden layer)."""

from __future__ import annotations

import math
from typing import Sequence

from torch import nn

from kdrun.errors import ConfigError
from kdrun.models.registry import MODELS


class MLP(nn.Sequential):
    """Flatten -> [Linear -> ReLU -> Dropout] per hidden width -> Linear to classes."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, dropout: float) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for hidden_width in hidden:
            layers += [nn.Linear(width, hidden_width), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden_width
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


@MODELS.register("mlp")
def mlp(input_shape: tuple[int, int, int], num_classes: int, hidden: Sequence[int] = (1200, 1200), dropout: float = 0.0) -> MLP:
    """An MLP over the flattened input; `hidden` lists the hidden widths (empty = linear model)."""
    widths = [int(width) for width in hidden]
    if any(width < 1 for width in widths):
        raise ConfigError(f"mlp hidden widths {widths} must all be >= 1", "e.g. hidden=[1200,1200]")
    if not 0 <= dropout < 1:
        raise ConfigError(f"mlp dropout={dropout} is outside [0, 1)", "e.g. dropout=0.5")
    return MLP(math.prod(input_shape), widths, num_classes, dropout)

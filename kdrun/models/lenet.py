"""LeNet-5 (LeCun et al. 1998) in its modern form: a LeNet-class CNN teacher for MNIST-sized digits.

conv5x5 -> ReLU -> 2x2 max pool, twice, then fully connected layers with ReLU. Unlike the 1998
network, both convolutions keep the size ("same" padding, so 28x28 inputs give 7x7 maps and 8x8
digits still fit), activations are ReLU instead of scaled tanh, pooling is max instead of
trainable subsampling, and dropout (off by default) may follow each hidden fully connected layer.
Defaults are LeNet-5's widths: 6 and 16 channels, 120 and 84 hidden units.
"""

from __future__ import annotations

import math
from typing import Sequence

from torch import nn

from kdrun.errors import ConfigError
from kdrun.models.mlp import classifier_layers
from kdrun.models.registry import MODELS


@MODELS.register("lenet5")
def lenet5(input_shape: tuple[int, int, int], num_classes: int, channels: Sequence[int] = (6, 16),
           hidden: Sequence[int] = (120, 84), dropout: float = 0.0) -> nn.Module:
    """LeNet-5 with `channels` per convolution and `hidden` fully connected widths."""
    convolutions, widths = [int(width) for width in channels], [int(width) for width in hidden]
    if len(convolutions) != 2 or min(convolutions + widths, default=1) < 1:
        raise ConfigError(f"lenet5 channels={convolutions} hidden={widths}: two conv widths and hidden widths >= 1 needed",
                          "e.g. channels=[6,16] hidden=[120,84]")
    if not 0 <= dropout < 1:
        raise ConfigError(f"lenet5 dropout={dropout} is outside [0, 1)", "e.g. dropout=0.5")
    layers: list[nn.Module] = []
    in_channels, height, width = input_shape
    for out_channels in convolutions:
        layers += [nn.Conv2d(in_channels, out_channels, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
        in_channels, height, width = out_channels, math.ceil(height / 2), math.ceil(width / 2)
    return nn.Sequential(*layers, nn.Flatten(), *classifier_layers(in_channels * height * width, widths, num_classes, dropout))

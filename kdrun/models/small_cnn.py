"""R3's student: two convolution blocks, global average pooling and a two-layer classifier."""

from __future__ import annotations

from torch import nn

from kdrun.models.registry import MODELS


def conv_block(in_channels: int, width: int) -> nn.Sequential:
    """conv-ReLU-conv-ReLU at constant width, then 2x2 max pooling (R3's block)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(2, ceil_mode=True),  # ceil_mode: inputs down to 1x1 still work
    )


@MODELS.register("small_cnn")
def small_cnn(input_shape: tuple[int, int, int], num_classes: int, widths: tuple[int, int] = (64, 128), hidden: int = 32) -> nn.Module:
    """in-64-64 / 64-128-128 blocks, global average pool, fc 128-32-classes (R3 with defaults)."""
    first, second = (int(width) for width in widths)
    return nn.Sequential(
        conv_block(input_shape[0], first),
        conv_block(first, second),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(second, hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )

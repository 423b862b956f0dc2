"""Wide ResNets (Zagoruyko & Komodakis 2016) as in the CRD benchmark: wrn_40_2, wrn_16_2, wrn_40_1, wrn_16_1.

WRN-d-k: a 3x3 stem with 16 channels, three stages of (d - 4) / 6 pre-activation blocks of widths
16k, 32k, 64k (strides 1, 2, 2), then BN-ReLU, global average pooling and a linear layer. As in
RepDistiller's models/wrn.py, a block that changes the width takes its 1x1 projection shortcut from
the pre-activated input, and one of constant width adds the raw input. The benchmark's
avg_pool2d(8) equals global pooling at 32x32; global pooling also accepts other sizes.
Parameter counts at 100 classes match RepDistiller's (tests/test_models.py).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional

from kdrun.errors import ConfigError
from kdrun.models.registry import MODELS

# name: (depth, widen factor)
WIDE_RESNETS = {"wrn_40_2": (40, 2), "wrn_16_2": (16, 2), "wrn_40_1": (40, 1), "wrn_16_1": (16, 1)}


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus the input or its projection."""

    def __init__(self, in_channels: int, width: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.projection = nn.Conv2d(in_channels, width, 1, stride, bias=False) if in_channels != width else None

    def forward(self, inputs: Tensor) -> Tensor:
        activated = functional.relu(self.bn1(inputs))
        out = self.conv2(self.dropout(functional.relu(self.bn2(self.conv1(activated)))))
        shortcut = inputs if self.projection is None else self.projection(activated)
        return out + shortcut


class WideResNet(nn.Module):
    def __init__(self, in_channels: int, depth: int, widen: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        blocks_per_stage = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        layers, channels = [], 16
        for stage, width in enumerate(widths):
            for block in range(blocks_per_stage):
                layers.append(WideBlock(channels, width, 2 if stage > 0 and block == 0 else 1, dropout))
                channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # He et al. init over fan-out, as in the benchmark
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc.bias)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.fc(self.head(self.features(self.stem(inputs))))


def register(name: str, depth: int, widen: int) -> None:
    def builder(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> nn.Module:
        if not 0 <= dropout < 1:
            raise ConfigError(f"{name} dropout={dropout} is outside [0, 1)", "the benchmark uses dropout=0")
        return WideResNet(input_shape[0], depth, widen, num_classes, float(dropout))

    builder.__doc__ = f"CRD's {name}: WRN-{depth}-{widen}, {(depth - 4) // 6} blocks per stage."
    MODELS.register(name)(builder)


for _name, (_depth, _widen) in WIDE_RESNETS.items():
    register(_name, _depth, _widen)

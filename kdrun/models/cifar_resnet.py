"""CIFAR-style ResNets as in the CRD benchmark (Tian et al. 2020): resnet20/32/56/110, resnet8x4, resnet32x4.

Three stages of basic blocks ((depth - 2) / 6 per stage) after a 3x3 stem, no max pooling. The
benchmark's final AvgPool2d(8) only fits 32x32 inputs; global average pooling gives the same
result there and also accepts other sizes.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdrun.models.registry import MODELS

# name: (depth, widths of stem and the three stages)
CIFAR_RESNETS = {
    "resnet20": (20, (16, 16, 32, 64)),
    "resnet32": (32, (16, 16, 32, 64)),
    "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)),
    "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
}


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != width:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, width, 1, stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, inputs: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(inputs)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(inputs))


class CifarResNet(nn.Module):
    def __init__(self, in_channels: int, depth: int, widths: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        blocks_per_stage = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers, channels = [], widths[0]
        for stage, width in enumerate(widths[1:]):
            for block in range(blocks_per_stage):
                layers.append(BasicBlock(channels, width, 2 if stage > 0 and block == 0 else 1))
                channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, inputs: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(self.stem(inputs))).flatten(1))


def register(name: str, depth: int, widths: tuple[int, ...]) -> None:
    def builder(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        return CifarResNet(input_shape[0], depth, widths, num_classes)

    builder.__doc__ = f"CRD's {name}: depth {depth}, widths {widths}."
    MODELS.register(name)(builder)


for _name, (_depth, _widths) in CIFAR_RESNETS.items():
    register(_name, _depth, _widths)

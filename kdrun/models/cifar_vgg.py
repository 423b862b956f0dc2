"""CIFAR VGGs with batch norm as in the CRD benchmark: vgg13 (teacher) and vgg8 (student).

RepDistiller's models/vgg.py (`vgg13` and `vgg8` there are its vgg13_bn / vgg8_bn): five blocks of
conv3x3(bias)-BN-ReLU, 2x2 max pooling after the first three, global average pooling and one linear
layer 512 -> classes (no fully connected stack). The fourth pooling runs only for inputs of 64 pixels
and more (RepDistiller pools there only at 64x64), so at 32x32 the last two blocks see 4x4 maps.
Pooling rounds up, so small inputs (8x8 digits) still reach the end. Parameter counts at 100
classes match RepDistiller's (tests/test_models.py).
"""

from __future__ import annotations

from torch import Tensor, nn

from kdrun.models.registry import MODELS

# name: conv widths per block (RepDistiller's cfg "B" for vgg13, "S" for vgg8)
CIFAR_VGGS = {
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
}
FOURTH_POOL_MIN_SIZE = 64


def conv_bn_block(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    def __init__(self, in_channels: int, blocks: tuple[tuple[int, ...], ...], num_classes: int) -> None:
        super().__init__()
        layers, channels = [], in_channels
        for widths in blocks:
            layers.append(conv_bn_block(channels, widths))
            channels = widths[-1]
        self.blocks = nn.ModuleList(layers)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # the benchmark's init: N(0, 2 / fan_out), zero bias
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, inputs: Tensor) -> Tensor:
        pooled_blocks = 4 if inputs.shape[-2] >= FOURTH_POOL_MIN_SIZE else 3
        out = inputs
        for index, block in enumerate(self.blocks):
            out = block(out)
            if index < pooled_blocks:
                out = self.pool(out)
        return self.classifier(self.head(out))


def register(name: str, blocks: tuple[tuple[int, ...], ...]) -> None:
    def builder(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        return CifarVGG(input_shape[0], blocks, num_classes)

    builder.__doc__ = f"CRD's {name} (with batch norm): conv widths {blocks}."
    MODELS.register(name)(builder)


for _name, _blocks in CIFAR_VGGS.items():
    register(_name, _blocks)

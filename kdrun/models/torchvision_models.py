"""torchvision classification models by name, adapted to the dataset, optionally pretrained.

One table says where each architecture keeps its first convolution, its max-pooling stem and its
final linear layer; adapting is then the same for all: a first convolution for `in_channels`
(pretrained RGB filters summed for grey input), a new head for `num_classes`, and with
`small_input=true` a 3x3 stride-1 stem without max pooling for 32x32 data (as CIFAR ResNets do).

`weights=DEFAULT` loads torchvision's ImageNet weights, `weights=/path/file` a local file in
torchvision's original layout (1000 classes, RGB); the head is replaced afterwards, so
`freeze_backbone=true` trains that new head only (R3).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from kdrun.download import downloading
from kdrun.errors import ConfigError
from kdrun.files import load_weights
from kdrun.models.registry import MODELS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """Dotted paths of the modules kdrun replaces in one torchvision architecture."""

    first_conv: str
    head: str
    stem_pool: Optional[str] = None  # removed by small_input


LAYOUTS = {
    "vgg11": Layout("features.0", "classifier.6"),
    "shufflenet_v2_x0_5": Layout("conv1.0", "fc", "maxpool"),
    "resnet18": Layout("conv1", "fc", "maxpool"),
    "resnet50": Layout("conv1", "fc", "maxpool"),
    "mobilenet_v3_small": Layout("features.0.0", "classifier.3"),
}


def replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, name, module)


def pretrained(name: str, weights: Optional[str]) -> nn.Module:
    """The architecture with ImageNet's 1000 classes, from torchvision weights, a file, or random."""
    import torchvision.models

    model = torchvision.models.get_model(name)
    if weights in (None, "", "none"):
        return model
    if weights != "DEFAULT":
        load_weights(Path(weights).expanduser().resolve(), model, "teacher.weights")
        return model
    enum = torchvision.models.get_model_weights(name).DEFAULT
    with downloading(f"cannot download torchvision's {name} weights {enum}",
                     f"offline: fetch {enum.url} elsewhere and pass teacher.weights=/path/to/{Path(enum.url).name}", reason_chars=120):
        model.load_state_dict(enum.get_state_dict(progress=False))
    return model


def adapt_first_conv(model: nn.Module, layout: Layout, in_channels: int, small_input: bool) -> None:
    old: nn.Conv2d = model.get_submodule(layout.first_conv)
    if small_input:
        if layout.stem_pool is None:
            raise ConfigError("small_input=true is only for models with a max-pooling stem", "drop small_input")
        replace(model, layout.first_conv, nn.Conv2d(in_channels, old.out_channels, 3, 1, 1, bias=old.bias is not None))
        replace(model, layout.stem_pool, nn.Identity())
        return
    if in_channels == old.in_channels:
        return
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None)
    with torch.no_grad():  # keep pretrained filters meaningful for grey input: sum over RGB
        new.weight.copy_(old.weight.mean(dim=1, keepdim=True).expand_as(new.weight) * (old.in_channels / in_channels))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    replace(model, layout.first_conv, new)


def build(name: str, input_shape: tuple[int, int, int], num_classes: int, weights: Optional[str],
          freeze_backbone: bool, small_input: bool) -> nn.Module:
    layout = LAYOUTS[name]
    if freeze_backbone and weights in (None, "", "none"):
        log.warning("%s: freeze_backbone=true without weights trains only the head of a random network", name)
    model = pretrained(name, weights)
    for module in model.modules():  # ceil_mode lets VGG's 2x2 pooling reach 1x1 on small inputs (same at even sizes)
        if isinstance(module, nn.MaxPool2d) and module.padding == 0:
            module.ceil_mode = True
    adapt_first_conv(model, layout, input_shape[0], small_input)
    if freeze_backbone:
        model.requires_grad_(False)
    old_head: nn.Linear = model.get_submodule(layout.head)
    replace(model, layout.head, nn.Linear(old_head.in_features, num_classes))
    return model


def register(name: str) -> None:
    def builder(input_shape: tuple[int, int, int], num_classes: int, weights: Optional[str] = None,
                freeze_backbone: bool = False, small_input: bool = False) -> nn.Module:
        return build(name, input_shape, num_classes, weights, freeze_backbone, small_input)

    builder.__doc__ = f"torchvision's {name}, adapted to the data's channels and classes."
    MODELS.register(name)(builder)


for _name in LAYOUTS:
    register(_name)

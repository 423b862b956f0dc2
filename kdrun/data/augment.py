"""Training-time augmentation, applied on the device to each uint8 batch (`dataset.augment`, and
`teacher.augment` for the teacher phase alone).

Random numbers come from the batches' own seeded generator, so a run is reproducible and the
independent and distilled students see the same augmented images in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional

import torch
from torch.nn import functional

from kdrun.errors import ConfigError
from kdrun.registry import Registry

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
AUGMENTATIONS: Registry = Registry("augmentation")


@AUGMENTATIONS.register("crop_flip")
def crop_flip() -> Augmentation:
    """Random crop after zero padding by 1/8 of the side (4 px at 32x32), then a random horizontal flip."""

    def apply(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        padding = max(1, min(images.shape[-2:]) // 8)
        offsets = torch.randint(0, 2 * padding + 1, (2, len(images)), generator=generator)
        flips = torch.rand(len(images), generator=generator) < 0.5
        return crop_padded(images, padding, offsets, flips)

    return apply


@AUGMENTATIONS.register("shift")
def shift(pixels: int = 2) -> Augmentation:
    """Random translation by up to `pixels` rows and columns, zero fill, no flips (Hinton et al. 2015's
    MNIST jitter of up to 2 pixels; digits are not mirror-symmetric).

    Each image moves by (dy, dx), each drawn uniformly from -pixels..pixels, independently.
    """
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 1:
        raise ConfigError(f"shift pixels={pixels} must be an integer >= 1", "e.g. {name: shift, pixels: 2}")

    def apply(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        offsets = torch.randint(0, 2 * pixels + 1, (2, len(images)), generator=generator)
        return crop_padded(images, pixels, offsets, None)

    return apply


def crop_padded(images: torch.Tensor, padding: int, offsets: torch.Tensor, flips: Optional[torch.Tensor]) -> torch.Tensor:
    """Zero-pad each side by `padding`, then cut each image's original size at (row, column) = offsets[:, i]
    of the padded image (flipped left-right where `flips`): offset `padding` is the image itself, offset 0
    moves it down/right by `padding` pixels."""
    count, channels, height, width = images.shape
    device = images.device
    offsets = offsets.to(device)
    padded = functional.pad(images, (padding, padding, padding, padding))
    rows = (offsets[0, :, None] + torch.arange(height, device=device)).view(count, 1, height, 1)
    columns = offsets[1, :, None] + torch.arange(width, device=device)
    if flips is not None:
        columns = torch.where(flips.to(device)[:, None], columns.flip(1), columns)
    columns = columns.view(count, 1, 1, width)
    samples = torch.arange(count, device=device).view(count, 1, 1, 1)
    return padded[samples, torch.arange(channels, device=device).view(1, -1, 1, 1), rows, columns]


def build_augmentation(spec: Any, key: str = "dataset.augment") -> Optional[Augmentation]:
    """The augmentation named in config: a name (`crop_flip`), or a mapping with a name and options
    (`{name: shift, pixels: 2}`); None or 'none' means no augmentation.

    `key` is the config key the spec came from (dataset.augment, teacher.augment): errors name it, so a
    user with two augmentations knows which one to fix.
    """
    if spec in (None, "none"):
        return None
    try:
        if isinstance(spec, Mapping):
            options = dict(spec)
            if "name" not in options:
                choices = ", ".join(AUGMENTATIONS.names())
                raise ConfigError(f"{options} has no 'name'", f"e.g. {{name: shift, pixels: 2}}; names: {choices}")
            return AUGMENTATIONS.build(str(options.pop("name")), **options)
        return AUGMENTATIONS.build(str(spec))
    except ConfigError as error:
        raise ConfigError(f"{key}: {error.message}", error.hint) from None

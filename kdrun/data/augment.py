"""Training-time augmentation, applied on the device to each uint8 batch (`dataset.augment`).

Random numbers come from the batches' own seeded generator, so a run is reproducible and the
independent and distilled students see the same augmented images in the same order.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.nn import functional

from kdrun.registry import Registry

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
AUGMENTATIONS: Registry = Registry("augmentation")


@AUGMENTATIONS.register("crop_flip")
def crop_flip() -> Augmentation:
    """Random crop after zero padding by 1/8 of the side (4 px at 32x32), then a random horizontal flip."""

    def apply(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        count, _, height, width = images.shape
        padding = max(1, min(height, width) // 8)
        padded = functional.pad(images, (padding, padding, padding, padding))
        offsets = torch.randint(0, 2 * padding + 1, (2, count), generator=generator).to(images.device)
        flips = (torch.rand(count, generator=generator) < 0.5).to(images.device)
        rows = (offsets[0, :, None] + torch.arange(height, device=images.device)).view(count, 1, height, 1)
        columns = offsets[1, :, None] + torch.arange(width, device=images.device)
        columns = torch.where(flips[:, None], columns.flip(1), columns).view(count, 1, 1, width)
        samples = torch.arange(count, device=images.device).view(count, 1, 1, 1)
        channels = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
        return padded[samples, channels, rows, columns]

    return apply


def build_augmentation(name: Optional[str]) -> Optional[Augmentation]:
    """The augmentation named in config; None or 'none' means no augmentation."""
    if name in (None, "none"):
        return None
    return AUGMENTATIONS.build(str(name))

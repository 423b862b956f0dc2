"""Tiny Vision Transformers: `vit_tiny` and `deit_tiny` (Touvron et al. 2021, "Training data-efficient
image transformers & distillation through attention"; recipe R2).

`deit_tiny` adds a learnable DISTILLATION token next to the class token, with its own head. The
class head learns from labels, the distillation head from the teacher (method `deit`). `forward`
returns the average of both heads' logits (DeiT's inference rule) in every mode, so any objective
(plain CE for the independent student) trains it; `forward_heads` exposes both heads to `deit`.
Sized for 8x8 digits up to 32x32 CIFAR: the patch size defaults to the largest divisor of the image
size leaving a grid of at least 4x4 patches.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from kdrun.errors import ConfigError
from kdrun.models.registry import MODELS


class HeadLogits(NamedTuple):
    cls: torch.Tensor           # (B, classes) from the class token, trained on labels
    distillation: torch.Tensor  # (B, classes) from the distillation token, trained on the teacher


class VisionTransformer(nn.Module):
    """Patch embedding -> [class (+ distillation) token] + positions -> encoder -> head(s)."""

    def __init__(
        self, input_shape: tuple[int, int, int], num_classes: int, patch_size: int, dim: int, depth: int,
        heads: int, distillation_token: bool = False,
    ) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.patch_embedding = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)
        patches = (height // patch_size) * (width // patch_size)
        self.tokens = nn.Parameter(torch.zeros(1, 2 if distillation_token else 1, dim))
        self.positions = nn.Parameter(torch.zeros(1, patches + self.tokens.shape[1], dim))
        nn.init.trunc_normal_(self.tokens, std=0.02)
        nn.init.trunc_normal_(self.positions, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.distillation_head = nn.Linear(dim, num_classes) if distillation_token else None

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normalised token outputs (B, tokens + patches, dim)."""
        patches = self.patch_embedding(inputs).flatten(2).transpose(1, 2)  # (B, patches, dim)
        tokens = self.tokens.expand(inputs.shape[0], -1, -1)
        return self.norm(self.encoder(torch.cat([tokens, patches], dim=1) + self.positions))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(inputs)[:, 0])


class DistilledVisionTransformer(VisionTransformer):
    """DeiT: a second (distillation) token and head; `forward` averages the two heads."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, distillation_token=True, **kwargs)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        heads = self.forward_heads(inputs)
        return (heads.cls + heads.distillation) / 2

    def forward_heads(self, inputs: torch.Tensor) -> HeadLogits:
        """Both heads' logits, for the `deit` method's separate losses."""
        encoded = self.encode(inputs)
        return HeadLogits(self.head(encoded[:, 0]), self.distillation_head(encoded[:, 1]))


def auto_patch_size(height: int, width: int) -> int:
    """The largest divisor of both sides that leaves at least 4 patches per side (1 for tiny images)."""
    common = math.gcd(height, width)
    candidates = [size for size in range(1, common + 1) if common % size == 0 and min(height, width) // size >= 4]
    return max(candidates, default=1)


def _build(input_shape, num_classes, patch_size, dim, depth, heads, distillation_token) -> VisionTransformer:
    _, height, width = input_shape
    size = int(patch_size) if patch_size else auto_patch_size(height, width)
    if size < 1 or height % size or width % size:
        raise ConfigError(f"patch_size={size} does not divide the {height}x{width} input", "use a divisor, or patch_size: null (auto)")
    if dim % heads:
        raise ConfigError(f"dim={dim} is not divisible by heads={heads}", "e.g. dim: 64, heads: 4")
    if distillation_token:
        return DistilledVisionTransformer(tuple(input_shape), num_classes, size, dim, depth, heads)
    return VisionTransformer(tuple(input_shape), num_classes, size, dim, depth, heads, distillation_token=False)


@MODELS.register("vit_tiny")
def vit_tiny(input_shape: tuple[int, int, int], num_classes: int, patch_size: int | None = None, dim: int = 64, depth: int = 2,
             heads: int = 4) -> VisionTransformer:
    """A tiny ViT with a class token only."""
    return _build(input_shape, num_classes, patch_size, dim, depth, heads, distillation_token=False)


@MODELS.register("deit_tiny")
def deit_tiny(input_shape: tuple[int, int, int], num_classes: int, patch_size: int | None = None, dim: int = 64, depth: int = 2,
              heads: int = 4) -> VisionTransformer:
    """A tiny DeiT: class token + distillation token, two heads averaged at inference."""
    return _build(input_shape, num_classes, patch_size, dim, depth, heads, distillation_token=True)

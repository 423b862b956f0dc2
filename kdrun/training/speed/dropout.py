"""Dropout with a cheaper random mask on CPU: the same distribution as nn.Dropout, about 3x faster.

torch's CPU dropout draws its mask with `bernoulli_`, which costs ~10 ns per element: on the R4
teacher (two 32x1200 masks per step) that was a sixth of the whole training step. Comparing
uniform float32 draws with p gives the same Bernoulli(1 - p) mask (to float32 resolution, 2^-24)
from the same seeded generator. Other devices keep the native fused kernel, which is already fast.
"""

from __future__ import annotations

import torch
from torch import nn


class FastDropout(nn.Dropout):
    """nn.Dropout (same `p`, same scaling by 1 / (1 - p) in training, identity in eval) with a fast CPU mask."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or inputs.device.type != "cpu":
            return super().forward(inputs)
        if self.p == 1.0:
            return inputs * 0.0
        # float32 draws even for bf16 inputs: bf16's 8-bit mantissa would round p and bias the keep rate.
        # In place: uniform -> 1.0 where kept / 0.0 where dropped -> scaled; faster than bernoulli_ at any size.
        mask = torch.rand(inputs.shape, device=inputs.device).ge_(self.p).mul_(1.0 / (1.0 - self.p))
        return inputs * mask.to(inputs.dtype)


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every plain nn.Dropout in `model` by FastDropout with the same p; returns how many.

    Only the exact class is replaced (Dropout2d, AlphaDropout and subclasses keep their own semantics).
    Dropout holds no parameters or buffers, so state dicts and module paths are unchanged.
    """
    plain = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Dropout
    ]
    for parent, name, child in plain:
        setattr(parent, name, FastDropout(child.p, child.inplace))
    return len(plain)

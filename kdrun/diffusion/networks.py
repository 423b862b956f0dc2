"""Denoising networks, registered by name (`network=unet`); each maps (z_t, t) to a v prediction.

The U-Net is diffusers' UNet2DModel, the field's maintained implementation (the optional extra
`kdrun[diffusion]`). Continuous time t in [0, 1] enters as diffusers' timestep 1000 t, the scale its
sinusoidal embedding is made for; the paper's code feeds an equivalent transform of log-SNR.
"""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace
from typing import Any, Sequence

import torch
from torch import nn

from kdrun.errors import ConfigError
from kdrun.registry import Registry

NETWORKS: Registry = Registry("diffusion network")
TIME_SCALE = 1000.0


def import_diffusers() -> Any:
    """The diffusers classes kdrun uses (UNet2DModel, DDIMScheduler), or a one-line ConfigError.

    Quietly: diffusers probes torchao when its model classes load, and torchao's import logs torch
    deprecation warnings that say nothing to a kdrun user.
    """
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        from diffusers import DDIMScheduler, UNet2DModel
    except ImportError as error:
        raise ConfigError(f"kdrun diffusion needs the diffusers package ({error})", "pip install 'kdrun[diffusion]'") from None
    finally:
        pytree_log.setLevel(level)
    return SimpleNamespace(UNet2DModel=UNet2DModel, DDIMScheduler=DDIMScheduler)


class UNetDenoiser(nn.Module):
    """v = UNet(z_t, 1000 t): diffusers' UNet2DModel behind kdrun's (z, t) interface."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(z, t * TIME_SCALE).sample


@NETWORKS.register("unet")
def unet(
    input_shape: tuple[int, int, int],
    channels: Sequence[int] = (32, 64),
    attention: Sequence[bool] = (False, False),
    layers_per_block: int = 1,
    norm_groups: int = 8,
    dropout: float = 0.0,
) -> UNetDenoiser:
    """A U-Net with one resolution level per entry of `channels` (halving the image between levels).

    `attention[k]` adds self-attention to level k (the paper's CIFAR model attends at 16x16 and 8x8).
    """
    image_channels, height, width = input_shape
    channels, attention = [int(value) for value in channels], [bool(value) for value in attention]
    check_unet(height, width, channels, attention, norm_groups, dropout)
    diffusers = import_diffusers()
    model = diffusers.UNet2DModel(
        sample_size=(height, width), in_channels=image_channels, out_channels=image_channels,
        block_out_channels=tuple(channels), layers_per_block=int(layers_per_block), norm_num_groups=int(norm_groups),
        down_block_types=tuple("AttnDownBlock2D" if attend else "DownBlock2D" for attend in attention),
        up_block_types=tuple("AttnUpBlock2D" if attend else "UpBlock2D" for attend in reversed(attention)),
        dropout=float(dropout),
    )
    return UNetDenoiser(model)


def check_unet(height: int, width: int, channels: list[int], attention: list[bool], norm_groups: int, dropout: float) -> None:
    """Shape rules diffusers would only report as a tensor mismatch deep in a forward pass."""
    if not channels or len(attention) != len(channels):
        raise ConfigError(
            f"network.attention has {len(attention)} entries, network.channels {len(channels)}",
            "give one attention flag per level, e.g. channels=[32,64] attention=[false,false]",
        )
    if any(width_ % norm_groups for width_ in channels):
        raise ConfigError(f"network.channels={channels} are not all multiples of network.norm_groups={norm_groups}",
                          "GroupNorm splits each level's channels into norm_groups groups")
    factor = 2 ** (len(channels) - 1)
    if height % factor or width % factor:
        raise ConfigError(
            f"{height}x{width} images cannot be halved {len(channels) - 1} times (network.channels has {len(channels)} levels)",
            "use fewer levels, or images whose sides divide by 2^(levels-1)",
        )
    if not 0 <= dropout < 1:
        raise ConfigError(f"network.dropout={dropout} is outside [0, 1)", "try network.dropout=0.1")


def build_network(name: str, input_shape: tuple[int, int, int], **options: Any) -> nn.Module:
    return NETWORKS.build(name, input_shape, **options)


"""Picking the device: `auto` tries cuda, then mps, then cpu; an explicit device must exist."""

from __future__ import annotations

import torch

from kdrun.errors import ConfigError


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"device '{requested}' is not a device name", "use auto, cpu, cuda, cuda:1 or mps") from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (device.index is None or device.index < torch.cuda.device_count()),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(device.type, False):
        raise ConfigError(f"device '{requested}' is not available on this machine", "use device=auto or device=cpu")
    return device

"""The trainer.* speed settings resolved for a device: precision, memory format, compilation, CPU switches.

Defaults are chosen per device: on CPU and MPS kdrun trains in float32 so that the same seed gives
bit-identical metrics; on CUDA `auto` means bfloat16 autocast where the GPU supports it. On CPU,
nn.Dropout layers get a cheaper mask (dropout.py), subnormal floats are flushed to zero and glibc keeps
freed gradient memory (host.py). See docs/performance.md.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import ContextManager

import torch
from torch import nn

from kdrun.errors import ConfigError
from kdrun.training.settings import TrainerSettings
from kdrun.training.speed.dropout import use_fast_dropout
from kdrun.training.speed.host import flush_subnormals, reuse_freed_host_memory

log = logging.getLogger("kdrun")

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class SpeedSettings:
    autocast_dtype: torch.dtype | None
    device_type: str
    channels_last: bool
    compile: bool
    fast_dropout: bool = False  # CPU only: nn.Dropout -> FastDropout (same distribution, other random stream)
    flush_denormal: bool = False  # CPU only: subnormal floats are read and written as 0 (x86 FTZ/DAZ)

    def autocast(self) -> ContextManager:
        """Mixed precision for the forward pass (weights and optimizer state stay float32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def gradient_scaler(self) -> torch.amp.GradScaler | None:
        """float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none."""
        if self.autocast_dtype is torch.float16:
            return torch.amp.GradScaler(self.device_type)
        return None

    def prepare(self, model: nn.Module) -> nn.Module:
        """Memory format for conv nets on GPUs; fast CPU dropout masks; compilation when asked for."""
        if self.fast_dropout:
            use_fast_dropout(model)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return torch.compile(model) if self.compile else model


def prepare_host(trainer: TrainerSettings, device: torch.device) -> SpeedSettings:
    """The speed settings for this device, with the process-wide CPU ones (allocator, subnormals) applied."""
    if device.type == "cpu":
        reuse_freed_host_memory()  # no page faults for the per-step gradients (docs/performance.md)
    speed = resolve_speed(trainer.precision, trainer.channels_last, trainer.compile, device, trainer.fast_dropout,
                          trainer.flush_denormal)
    if speed.flush_denormal and not flush_subnormals():
        log.info("subnormal floats are flushed only on some CPU threads (torch's threads started before this run)")
    return speed


def resolve_speed(
    precision: str, channels_last: str | bool, compile_model: bool, device: torch.device, fast_dropout: str | bool = "auto",
    flush_denormal: str | bool = "auto",
) -> SpeedSettings:
    """Turn the trainer's config values into concrete settings for this device.

    Raises:
        ConfigError: unknown precision, fast_dropout or flush_denormal value, or fp16 where no GradScaler backend exists.
    """
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision} is not known", f"use one of: auto, {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"trainer.precision=fp16 needs a CUDA device (this run uses {device})", "use bf16 or fp32")
    use_channels_last = device.type == "cuda" if channels_last == "auto" else bool(channels_last)
    # GPUs already have a fused dropout kernel and flush subnormals in their own kernels
    cpu_masks = cpu_only_switch("fast_dropout", fast_dropout, device)
    flush = cpu_only_switch("flush_denormal", flush_denormal, device)
    return SpeedSettings(PRECISIONS[precision], device.type, use_channels_last, bool(compile_model), cpu_masks, flush)


def cpu_only_switch(name: str, value: str | bool, device: torch.device) -> bool:
    """A trainer.<name> of auto/true/false for a CPU-only speed-up: on for CPU runs unless false.

    Raises:
        ConfigError: for any other value.
    """
    if value not in ("auto", True, False):
        raise ConfigError(f"trainer.{name}={value} is not known", "use auto, true or false")
    return device.type == "cpu" and value in ("auto", True)

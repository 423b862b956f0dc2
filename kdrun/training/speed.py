"""Device-level speed settings: autocast precision, memory format, torch.compile, CPU dropout masks.

Defaults are chosen per device: on CPU and MPS kdrun trains in float32 so that the same seed gives
bit-identical metrics; on CUDA `auto` means bfloat16 autocast where the GPU supports it.
On CPU, nn.Dropout layers get a cheaper mask (kdrun/models/fast_dropout.py) and subnormal floats are
flushed to zero (flush_subnormals). See docs/performance.md.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

import torch
from torch import nn

from kdrun.errors import ConfigError
from kdrun.models.fast_dropout import use_fast_dropout

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


def flush_subnormals() -> bool:
    """Treat float values below 1.2e-38 as 0 on the CPU (x86 FTZ/DAZ); True if every intra-op thread does.

    Adam's first moment of a weight whose unit stopped firing decays by 0.9 a step and passes through
    the subnormal range, where x86 arithmetic is ~100x slower: with lr 1e-3 the R4 teacher's epochs
    2 and 3 took 7.8-8.1 s instead of 2.7-2.8 s (docs/performance.md). Values that small change no
    weight: an update of 1e-38 is far below the last bit of any weight it is added to.

    The flags are per thread and a thread inherits them when it starts, so this must run before torch
    starts its intra-op threads (Run does it first thing); the check below multiplies subnormals on
    every thread to find out.
    """
    if not torch.set_flush_denormal(True):
        return False
    return subnormals_left() == 0


def subnormals_left() -> int:
    """How many of a large block of subnormals survive a multiplication by 1 (run on every intra-op thread).

    Built from the bit pattern 0x00000001 (1.4e-45): a float literal would already be flushed when the
    calling thread converts it.
    """
    probe = torch.ones(torch.get_num_threads() * 65_536, dtype=torch.int32).view(torch.float32)
    return int((probe * 1.0).count_nonzero())

"""Numbers that make compressed rows comparable: non-zero parameters, size on disk, CPU latency.

Latency is measured here, in the run, on the CPU (where int8 kernels run) as the median of several
timed forwards of one batch, after a few untimed warm-up calls; medians shrug off the odd slow call
caused by other processes on a shared machine.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

WARMUP_CALLS = 3


def count_nonzero(model: nn.Module) -> int:
    """Non-zero entries over the model's parameters; int8 tensor subclasses are counted on their int8 data."""
    total = 0
    for tensor in model.state_dict().values():
        if not tensor.is_floating_point() and not hasattr(tensor, "qdata"):
            continue  # masks, counters: not parameters
        data = getattr(tensor, "qdata", tensor)
        total += int(torch.count_nonzero(data))
    return total


def size_mb(path: Path) -> float:
    """Size of a saved model file in MB (10^6 bytes), as a user sees it on disk."""
    return path.stat().st_size / 1e6


def cpu_latency_ms(model: nn.Module, inputs: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of one forward of `inputs` on the CPU (eval mode, no autograd).

    A CPU copy is timed so the caller's model stays on its device.
    """
    on_cpu = model if _is_on_cpu(model) else copy.deepcopy(model).cpu()
    on_cpu.eval()
    with torch.inference_mode():
        return median_ms(on_cpu, inputs.cpu(), repeats)


def median_ms(call: Callable[[torch.Tensor], Any], inputs: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of `call(inputs)` over `repeats` timed calls, after WARMUP_CALLS untimed ones."""
    for _ in range(WARMUP_CALLS):
        call(inputs)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        call(inputs)
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def _is_on_cpu(model: nn.Module) -> bool:
    return all(parameter.device.type == "cpu" for parameter in model.parameters())

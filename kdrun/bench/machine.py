"""The machine side of `kdrun bench`: what the hardware allows, and measuring without bias.

A phase cannot finish faster than its arithmetic at the machine's matmul rate (compute floor), nor
faster than the bytes it must move at the machine's stream bandwidth (memory floor). At batch 32 the
R4 teacher is bound by both, so the bench reports the larger of the two as the phase's floor and how
close each side gets to it. Everything is measured on every call; nothing is stored. `warm_up` pays
once-per-process costs before either side is timed; `peak_memory_mb` reads the process's peak RSS.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Adam over float32 must read and write the weights and both moment estimates every step; the
# gradient, activations and the weights' second read could in principle stay in cache, so 24 bytes
# per parameter is a lower bound on what one step moves through memory.
ADAM_BYTES_PER_PARAMETER = 2 * 3 * 4


@dataclass(frozen=True)
class Machine:
    matmul_gflops: float      # float32 1024^3 matmul, best of a few timings
    bandwidth_gbs: float      # stream "add" (two reads, one write) over arrays far larger than the caches
    threads: int
    torch_version: str


@dataclass(frozen=True)
class Floor:
    compute_seconds: float
    memory_seconds: float

    @property
    def seconds(self) -> float:
        return max(self.compute_seconds, self.memory_seconds)


def measure_machine() -> Machine:
    return Machine(matmul_gflops(), stream_bandwidth_gbs(), torch.get_num_threads(), torch.__version__)


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    """The machine's float32 matmul throughput (best of three timings), in GFLOP/s."""
    left, right = torch.randn(size, size), torch.randn(size, size)
    torch.mm(left, right)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            torch.mm(left, right)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 * repeats / best / 1e9


def stream_bandwidth_gbs(megabytes: int = 64, repeats: int = 10) -> float:
    """Memory bandwidth of `c = a + b` over float32 arrays of `megabytes` each (best of three), in GB/s."""
    count = megabytes * (1 << 20) // 4
    first, second, out = torch.rand(count), torch.rand(count), torch.empty(count)
    torch.add(first, second, out=out)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            torch.add(first, second, out=out)
        best = min(best, time.perf_counter() - started)
    return 3 * count * 4 * repeats / best / 1e9


def flops_per_sample(model: nn.Module, input_shape: tuple[int, ...], backward: bool) -> float:
    """FLOPs of one sample's forward (and backward), counted by torch on the real model."""
    inputs = torch.randn(32, *input_shape)
    with FlopCounterMode(display=False) as counter:
        output = model(inputs)
        if backward:
            output.sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 32


def training_floor(machine: Machine, flops: float, steps: int, parameters: int) -> Floor:
    """The floor of a training phase: its FLOPs at the matmul rate, its Adam-state bytes at the bandwidth."""
    memory_bytes = steps * ADAM_BYTES_PER_PARAMETER * parameters
    return Floor(flops / (machine.matmul_gflops * 1e9), memory_bytes / (machine.bandwidth_gbs * 1e9))


def warm_up() -> None:
    """Pay once-per-process costs before anything is timed, so neither side is charged for them.

    The first optimizer step imports torch._dynamo (about one second here) and the first matmul
    starts the thread pool; a plain script pays them once too, whichever loop comes first.
    """
    model = nn.Linear(8, 8)
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024

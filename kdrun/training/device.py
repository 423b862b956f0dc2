"""Picking the device (`auto` tries cuda, then mps, then cpu; an explicit device must exist), CPU threads
and the CPU memory allocator."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Any

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


def configure_threads(setting: Any, parallel_jobs: int) -> int:
    """CPU threads for this process; returns the number in effect.

    `auto` keeps torch's default (one thread per core), except when a parallel launcher runs several
    jobs at once (joblib, n_jobs > 1): then each job gets its share of the cores. Otherwise every job
    starts one thread per core, the cores are oversubscribed and spin-waiting threads slow all jobs
    down many times over (we measured a 12x slower epoch with two such processes on 2 cores).
    """
    if str(setting) == "auto":
        if parallel_jobs <= 1:
            return torch.get_num_threads()
        threads = max(1, (os.cpu_count() or 1) // parallel_jobs)
    else:
        threads = int(setting)  # config.validate has checked it is an integer >= 1
    torch.set_num_threads(threads)
    return threads


def parallel_jobs(launcher: Any) -> int:
    """How many jobs a Hydra launcher runs at once on this machine (joblib's n_jobs; -1 = every core)."""
    n_jobs = int(launcher.get("n_jobs", 1) or 1) if launcher is not None else 1
    return os.cpu_count() or 1 if n_jobs < 0 else n_jobs


GLIBC_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
GLIBC_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # the largest value every glibc accepts (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD_BYTES = 256 << 20


def reuse_freed_host_memory() -> bool:
    """Let glibc keep freed multi-megabyte blocks for reuse instead of unmapping them; True if applied.

    glibc serves allocations above its mmap threshold with fresh pages from the kernel and returns them on
    free. A CPU training step frees and re-allocates its weight-sized gradients every step, so without this
    steps pay page faults and zeroing of new memory (R4 teacher: up to a few hundred faults, 6-9% of a step,
    docs/performance.md). tcmalloc and jemalloc, which PyTorch's CPU tuning guide recommends, reuse
    such blocks too. Process-wide and harmless elsewhere; a no-op off glibc (macOS, Windows, musl).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(GLIBC_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
            libc.mallopt(GLIBC_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        )
    except (OSError, AttributeError):  # no loadable libc or no mallopt: keep the defaults
        return False

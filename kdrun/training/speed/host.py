"""Process-wide CPU settings of a run: glibc keeps freed gradient memory, subnormal floats count as zero.

Both are set once, before torch starts its intra-op threads (kdrun.training.speed.prepare_host), and both
go through public interfaces: glibc's documented `mallopt` (a no-op elsewhere) and torch's
`torch.set_flush_denormal`, each checked for having taken effect.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

import torch

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

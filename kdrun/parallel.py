"""torchrun on the ground floor: where this process sits, the process group, and the few collectives kdrun uses.

`torchrun --nproc_per_node=N -m kdrun train ...` starts N copies of kdrun; torchrun tells each its
place through RANK, WORLD_SIZE and LOCAL_RANK. `session()` joins them into one process group (NCCL
for CUDA tensors, gloo for CPU tensors) for the duration of a command. Outside torchrun (or with
WORLD_SIZE=1) nothing is initialised and every helper here returns its input, so a single process
behaves and performs exactly as without this module.

This module imports nothing of kdrun and imports torch only inside the functions that need it, so
any layer may use it (data takes a plain `Topology`, files.py asks `is_main`) and `kdrun train
--help` stays torch-free. The DDP wrapper of the trained model lives in the training core
(kdrun/training/ddp.py); docs/distributed.md has the whole picture.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from typing import Any, Iterator


@dataclass(frozen=True)
class Topology:
    """Where this process sits: rank among world_size processes, local_rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def sharded(self) -> bool:
        """True when the work is split over several processes."""
        return self.world_size > 1


SINGLE = Topology()
_topology = SINGLE  # replaced by session() while a process group is up


def launched_by_torchrun() -> bool:
    """True when torchrun (or any launcher setting its variables) started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def environment_rank() -> int:
    """This process's rank as torchrun announced it (usable before the process group exists)."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def topology() -> Topology:
    return _topology


def is_active() -> bool:
    """True inside a session of several processes."""
    return _topology.world_size > 1


def is_main() -> bool:
    """Rank 0, or the only process: it writes, prints, and makes the decisions the other ranks follow.

    The rule for who writes lives here and is applied in one place, kdrun/files.py, before every write
    (weights, summary.json, metrics, cache entries, checkpoints); the other ranks compute the same run
    and stay silent.
    """
    return _topology.rank == 0


@contextlib.contextmanager
def session() -> Iterator[Topology]:
    """The process group for the duration of a command; a no-op outside torchrun.

    The backend is chosen per tensor device ("cpu:gloo,cuda:nccl" when CUDA exists) because the
    device comes from the composed config (device=cpu on a GPU node must still work).
    """
    global _topology
    if not launched_by_torchrun():
        yield _topology
        return
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    _topology = Topology(dist.get_rank(), dist.get_world_size(), local_rank)
    try:
        yield _topology
    finally:
        _topology = SINGLE
        # DDP wrappers made during the command sit in reference cycles. Left to the cyclic GC, they were
        # freed at interpreter exit, after the process group, and gloo aborted that rank ("terminate
        # called without an active exception") in 7 of 40 torchrun runs; torchrun then killed the other
        # ranks, rank 0 before it wrote summary.json. Freed here, while the group exists: 0 of 40.
        gc.collect()
        dist.destroy_process_group()


def broadcast_object(value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not is_active():
        return value
    import torch.distributed as dist

    holder = [value if is_main() else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_reduce_sum(tensor: Any) -> Any:
    """The sum of a tensor over all ranks (a new tensor); the tensor itself in a single process."""
    if not is_active():
        return tensor
    import torch.distributed as dist

    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def sum_across_ranks(term_sums: dict[str, Any], correct: Any) -> tuple[dict[str, Any], Any]:
    """Per-term loss sums and a correct count summed over ranks, in one collective (float64, exact
    for counts below 2**53). Every rank runs the same objective, so the term names agree."""
    if not is_active():
        return term_sums, correct
    import torch

    names = list(term_sums)
    packed = torch.stack([torch.as_tensor(term_sums[name], device=correct.device).double() for name in names] + [correct.double()])
    packed = all_reduce_sum(packed)
    return {name: packed[index] for index, name in enumerate(names)}, packed[-1].round().long()

"""torchrun support: one process per device, PyTorch's DistributedDataParallel, rank 0 writes.

`torchrun --nproc_per_node=N -m kdrun train ...` starts N copies of kdrun; torchrun tells each its
place through RANK, WORLD_SIZE and LOCAL_RANK. `session()` joins them into one process group (NCCL
for CUDA tensors, gloo for CPU tensors) and everything else here asks "am I part of a group?". In a
plain `kdrun train` (or WORLD_SIZE=1) nothing is initialised and every helper is a no-op that returns
its input, so a single process behaves and performs exactly as before.

What each piece is for (docs/distributed.md has the whole picture):
- `place`: device=cuda means "my GPU", i.e. cuda:LOCAL_RANK, so ranks on one node don't share a GPU.
- `synchronised`: the trained model AND the objective's trainable extras (adapters) in one DDP module,
  so their gradients are averaged across ranks; the objective keeps calling the plain model, so
  feature taps (module paths) see the names they were configured with.
- `sum_across_ranks`, `all_reduce_sum`: loss sums and correct counts summed over ranks, so every rank
  computes identical metrics and takes identical decisions (best epoch, NaN check).
- `broadcast_object`: rank 0 decides (run dir, teacher cache hit), the others follow.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from kdrun.errors import ConfigError, RunError

FAIL_RANK_ENV = "KDRUN_TEST_FAIL_RANK"  # test-only: this rank raises at its first training step


@dataclass(frozen=True)
class Topology:
    """Where this process sits: rank among world_size processes, local_rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


SINGLE = Topology()
_topology = SINGLE  # replaced by session() while a process group is up


def launched_by_torchrun() -> bool:
    """True when torchrun (or any launcher setting its variables) started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def environment_rank() -> int:
    """This process's rank as torchrun announced it (usable before the process group exists)."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def is_active() -> bool:
    return _topology.world_size > 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    return _topology.rank == 0


def topology() -> Topology:
    return _topology


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


def place(device: torch.device) -> torch.device:
    """The device this rank trains on: cuda means cuda:LOCAL_RANK under torchrun."""
    if not is_active():
        return device
    if device.type == "cuda":
        return torch.device("cuda", _topology.local_rank % torch.cuda.device_count())
    if device.type != "cpu":
        raise ConfigError(f"torchrun with device={device.type} is not supported", "use device=cuda or device=cpu")
    return device


def barrier() -> None:
    if is_active():
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not is_active():
        return value
    import torch.distributed as dist

    holder = [value if is_main() else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over all ranks (a new tensor); the tensor itself in a single process."""
    if not is_active():
        return tensor
    import torch.distributed as dist

    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def sum_across_ranks(term_sums: dict[str, Any], correct: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor]:
    """Per-term loss sums and the correct count summed over ranks, in one collective (float64, exact
    for counts below 2**53). Every rank runs the same objective, so the term names agree."""
    if not is_active():
        return term_sums, correct
    names = list(term_sums)
    packed = torch.stack([torch.as_tensor(term_sums[name], device=correct.device).double() for name in names] + [correct.double()])
    packed = all_reduce_sum(packed)
    return {name: packed[index] for index, name in enumerate(names)}, packed[-1].round().long()


class _ModelAndObjective(nn.Module):
    """The pair DDP wraps: one forward = the objective applied to the model."""

    def __init__(self, model: nn.Module, objective: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Any) -> Any:
        return self.objective(self.model, batch)


def synchronised(model: nn.Module, objective: Any, batches: Any) -> Any:
    """`objective` whose training forward runs through DDP over (model, objective) under torchrun.

    `batches` (the training batches) tell each step its global batch size, so that a last batch
    split unevenly over the ranks still gets the single-process gradient (see DistributedObjective).

    Single process: `objective` itself. Under torchrun also reseeds the global generator with
    seed + rank, so dropout masks differ between ranks (as they would across one big batch).
    """
    if not is_active():
        return objective
    from kdrun.training.distributed_objective import DistributedObjective

    torch.manual_seed(torch.initial_seed() + _topology.rank)
    return DistributedObjective(model, objective, _ModelAndObjective(model, objective), batches)


def check_injected_failure() -> None:
    """Test hook: the rank named in KDRUN_TEST_FAIL_RANK fails, to test how a rank failure ends a run."""
    if os.environ.get(FAIL_RANK_ENV) == str(_topology.rank) and is_active():
        raise RunError(f"rank {_topology.rank} failed on purpose ({FAIL_RANK_ENV} is set)", f"unset {FAIL_RANK_ENV}")

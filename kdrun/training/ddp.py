"""Training under torchrun: the phase's model and objective inside DistributedDataParallel.

The training loop calls `objective(model, batch)`, optimises `model.parameters()` plus
`objective.parameters()`, and reads `objective.temperature`. `DistributedObjective` keeps all three
working: its only registered child is the original objective (so `parameters()` and `train()` are
the original's, never the model's twice), and its forward runs the DDP module that holds the model
and the objective together, so gradients of both (adapters too) are combined across ranks during
backward, while the objective keeps calling the plain model (feature taps see their module paths).

DDP's default averages the ranks' gradients, which equals the single-process gradient only when
every rank holds the same number of samples. A last batch of 15 over 2 ranks is split 8/7, so the
combination is weighted instead: each rank scales its (per-sample mean) gradient by its share of the
global batch, n_rank / n_global (`Batch.global_size`), before the sum. For full batches that is
1/world_size, DDP's own. Where the ranks come from: kdrun/parallel.py.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kdrun import parallel
from kdrun.data.batches import Batch
from kdrun.errors import RunError
from kdrun.methods.base import Objective, StepOutput

FAIL_RANK_ENV = "KDRUN_TEST_FAIL_RANK"  # test-only: this rank raises at its first training step


def synchronised(model: nn.Module, objective: Objective) -> Objective:
    """`objective` whose training forward runs through DDP over (model, objective) under torchrun.

    Single process: `objective` itself. Under torchrun also reseeds the global generator with
    seed + rank, so dropout masks differ between ranks (as they would across one big batch).
    """
    if not parallel.is_active():
        return objective
    torch.manual_seed(torch.initial_seed() + parallel.topology().rank)
    return DistributedObjective(model, objective)


class _ModelAndObjective(nn.Module):
    """The pair DDP wraps: one forward = the objective applied to the model."""

    def __init__(self, model: nn.Module, objective: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Any) -> Any:
        return self.objective(self.model, batch)


class DistributedObjective(Objective):
    """Delegates everything to `inner`; the step itself goes through DDP over (model, inner)."""

    def __init__(self, model: nn.Module, inner: Objective) -> None:
        super().__init__()
        self.inner = inner
        self.uses_cached_teacher_logits = inner.uses_cached_teacher_logits
        parameter = next(model.parameters())
        device_ids = [parameter.device.index] if parameter.device.type == "cuda" else None
        # Not registered as a child (plain __dict__ entry): the pair contains the model, whose
        # parameters must not show up in this objective's parameters() a second time.
        self.__dict__["replicated"] = DistributedDataParallel(_ModelAndObjective(model, inner), device_ids=device_ids)
        self.__dict__["model"] = model
        self.share = _Share()
        self.replicated.register_comm_hook(self.share, _weighted_sum)

    @property
    def temperature(self) -> float | None:  # type: ignore[override]
        return self.inner.temperature

    @property
    def teacher(self) -> Any:  # type: ignore[override]
        return self.inner.teacher

    def forward(self, model: nn.Module, batch: Batch) -> StepOutput:
        if model is not self.__dict__["model"]:
            raise ValueError("DistributedObjective was built for another model")  # a programming error, not user input
        check_injected_failure()
        global_size = batch.global_size
        self.share.weight = len(batch.targets) / global_size if global_size else 1.0 / dist.get_world_size()
        return self.replicated(batch)

    def begin_step(self, step: int, total_steps: int) -> None:
        self.inner.begin_step(step, total_steps)

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        self.inner.begin_epoch(epoch, epochs)

    def prepare(self, student: nn.Module, sample_inputs: torch.Tensor) -> None:
        self.inner.prepare(student, sample_inputs)

    def describe(self) -> str:
        return self.inner.describe()

    def __getattr__(self, name: str) -> Any:
        """Attributes only the inner objective has (e.g. `teacher`) are read from it."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_modules"]["inner"], name)


class _Share:
    """This rank's weight in the current step's gradient sum (set before each forward)."""

    weight: float = 0.0


def _weighted_sum(share, bucket):  # no annotations: DDP checks them at runtime, and they are strings here
    """DDP communication hook: sum over ranks of weight x local gradient (a sample-weighted mean)."""
    tensor = bucket.buffer().mul_(share.weight)
    future = dist.all_reduce(tensor, async_op=True).get_future()
    return future.then(lambda done: done.value()[0])


def check_injected_failure() -> None:
    """Test hook: the rank named in KDRUN_TEST_FAIL_RANK fails, to test how a rank failure ends a run."""
    rank = parallel.topology().rank
    if os.environ.get(FAIL_RANK_ENV) == str(rank) and parallel.is_active():
        raise RunError(f"rank {rank} failed on purpose ({FAIL_RANK_ENV} is set)", f"unset {FAIL_RANK_ENV}")

"""The distilled phase of K jobs at once: THE loop's epoch (kdrun/training/loop.py run_epoch), one step for K students.

Everything that is per job in a sequential run stays per job here: the loss (each member's own T and
term weights), the optimizer state (one Adam/SGD over the stacked tensors is K independent ones, as
both update element by element with the same hyper-parameters), the epoch records, the best-validation
selection and the test of the selected weights. A member whose loss stops being finite fails alone,
with the error its solo run would raise; the others train on (their gradients never meet: the loss
summed over members has each member's loss as the only term depending on its parameters).
The members share the batch order, because a stack holds jobs of one seed (grouping.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from kdrun.data.batches import Batch, InMemoryBatches
from kdrun.errors import RunError
from kdrun.methods import Objective
from kdrun.methods.base import check_teacher_isolated
from kdrun.results import EpochRecord, PhaseResult
from kdrun.training.loop import PhaseSettings, check_finite, run_epoch
from kdrun.training.stacked.students import StackedStudents

log = logging.getLogger("kdrun")


@dataclass
class MemberOutcome:
    """One job's distilled phase as trained in the stack: its result and best weights, or its error."""

    result: Optional[PhaseResult] = None
    state: Optional[dict[str, torch.Tensor]] = None
    error: Optional[RunError] = None
    steps_per_epoch: int = 0
    members: int = 1


@dataclass
class _Member:
    objective: Objective
    history: list[EpochRecord] = field(default_factory=list)
    best_val_acc: float = -1.0
    best_epoch: int = 0
    best_state: Optional[dict[str, torch.Tensor]] = None
    error: Optional[RunError] = None


def train_stacked(
    phase: str, students: list[nn.Module], objectives: list[Objective], train_batches: InMemoryBatches,
    val_batches: InMemoryBatches, test_batches: InMemoryBatches, settings: PhaseSettings,
) -> list[MemberOutcome]:
    """Train students[k] under objectives[k] for every k together; one outcome per member, in order.

    Raises:
        TeacherLeak: when a member's objective exposes its teacher to training (as THE loop does).
    """
    started = time.perf_counter()
    stack = StackedStudents(students)
    for objective in objectives:
        check_teacher_isolated(objective, stack.parameters())
    members = [_Member(objective) for objective in objectives]
    optimizer = settings.make_optimizer(stack.parameters())
    scheduler = settings.make_scheduler(optimizer) if settings.make_scheduler else None
    scaler = settings.speed.gradient_scaler()
    if settings.epochs == 0:
        for member, correct in zip(members, stack.correct(val_batches).tolist()):
            member.best_val_acc = correct / max(val_batches.num_samples, 1)
    for index, member in enumerate(members):
        member.best_state = stack.member_state(index)  # THE loop starts from the initial weights too
    for epoch in range(1, settings.epochs + 1):
        for member in members:
            member.objective.begin_epoch(epoch, settings.epochs)
        records = _stacked_epoch(phase, epoch, stack, members, optimizer, train_batches, settings, scaler)
        val_correct = stack.correct(val_batches).tolist()
        if scheduler is not None:
            scheduler.step()
        for index, (member, record) in enumerate(zip(members, records)):
            if member.error is not None:
                continue
            record.val_acc = val_correct[index] / max(val_batches.num_samples, 1)
            member.history.append(record)
            if record.val_acc > member.best_val_acc:
                member.best_val_acc, member.best_epoch, member.best_state = record.val_acc, epoch, stack.member_state(index)
        log.info("%s (%d students stacked): epoch %d/%d, %.1fs", phase, stack.size, epoch, settings.epochs, records[0].seconds)
    return _tested(stack, members, test_batches, settings.epochs, len(train_batches), time.perf_counter() - started)


def _stacked_epoch(phase: str, epoch: int, stack: StackedStudents, members: list[_Member], optimizer: torch.optim.Optimizer,
                   batches: InMemoryBatches, settings: PhaseSettings, scaler: torch.amp.GradScaler | None) -> list[EpochRecord]:
    """One pass of THE loop's epoch (run_epoch) for every member; the members' records (val_acc still NaN)."""
    stack.train(True)
    template = members[0].objective  # computes every member's loss with the member's own values
    for member in members:
        member.objective.train()
    weights = {name: torch.tensor([m.objective.weights[name] for m in members], device=batches.device)
               for name in template.weights} if hasattr(template, "weights") else {}
    total_steps = settings.epochs * len(batches)
    temperatures: dict[tuple, torch.Tensor] = {}  # a schedule changes them; a constant T makes one tensor

    def step(index: int, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        for member in members:
            member.objective.begin_step(index, total_steps)
        current = tuple(member.objective.temperature for member in members)
        if current not in temperatures:
            temperatures.clear()
            temperatures[current] = torch.tensor(current, device=batches.device)
        return stack.losses(template, batch, temperatures[current], weights)

    totals = run_epoch(step, optimizer, batches, (epoch - 1) * len(batches), settings.speed, scaler, lambda: None)
    samples, seconds = batches.num_samples, time.perf_counter() - totals.started
    sums = {name: total.tolist() for name, total in totals.term_sums.items()}  # one sync per epoch
    correct_counts = totals.correct.tolist()
    records = []
    for index, member in enumerate(members):
        loss_means = {name: values[index] / samples for name, values in sums.items()}
        record = EpochRecord(phase, epoch, loss_means, correct_counts[index] / samples, float("nan"), totals.lr,
                             member.objective.temperature, samples / seconds if seconds > 0 else float("inf"), seconds)
        if member.error is None:
            try:
                check_finite(phase, epoch, loss_means)
            except RunError as error:  # this member fails; the others are unaffected
                member.error = error
        records.append(record)
    return records


def _tested(stack: StackedStudents, members: list[_Member], test_batches: InMemoryBatches, epochs: int,
            steps_per_epoch: int, seconds: float) -> list[MemberOutcome]:
    """Test the last weights, then (as THE loop) the best-validation weights where they are not the last."""
    samples = max(test_batches.num_samples, 1)
    last = [correct / samples for correct in stack.correct(test_batches).tolist()]
    best = list(last)
    if any(member.best_epoch != epochs for member in members):
        for index, member in enumerate(members):
            stack.load_member_state(index, member.best_state)
        best = [correct / samples for correct in stack.correct(test_batches).tolist()]
    outcomes = []
    for index, member in enumerate(members):
        if member.error is not None:
            outcomes.append(MemberOutcome(error=member.error, steps_per_epoch=steps_per_epoch, members=stack.size))
            continue
        test_acc = best[index] if member.best_epoch != epochs else last[index]
        result = PhaseResult(member.best_epoch, member.best_val_acc, test_acc, last[index], seconds, member.history)
        outcomes.append(MemberOutcome(result, member.best_state, None, steps_per_epoch, stack.size))
    return outcomes

"""The distilled phase of a run that belongs to a stack: trained with its stack, then replayed in its run.

Replaying gives the run exactly what THE loop would have given it: the observers see the phase start,
every epoch's record (so metrics.jsonl, the console and TensorBoard get the same lines) and its end;
the student gets its best-validation weights; a member whose loss stopped being finite raises the
RunError its solo run would raise, so its run fails like one, alone.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from kdrun.errors import RunError
from kdrun.methods import Objective
from kdrun.results import PhaseResult
from kdrun.training.context import RunContext, build_method
from kdrun.training.loop import PhaseSettings
from kdrun.training.stacked.loop import MemberOutcome, train_stacked
from kdrun.training.stacked.plan import Stack, member_key, stack_of

log = logging.getLogger("kdrun")
PHASE = "distilled"


def distilled_result(context: RunContext, student: nn.Module, method: Objective) -> tuple[PhaseResult, Optional[int]]:
    """The distilled phase's result and the size of the stack it was trained in (None: trained alone by THE loop)."""
    stack = stack_of(context.settings)
    outcome = stacked_outcome(context, stack, method) if stack is not None else None
    if outcome is None:
        if stack is not None:
            log.info("%s: trained alone (%s)", PHASE, stack.fallback)
        return context.train(PHASE, student, method, context.settings.student_epochs), None
    return replay(context, outcome, student), outcome.members


def stacked_outcome(context: RunContext, stack: Stack, method: Objective) -> Optional[MemberOutcome]:
    """This run's outcome, training the stack's pending members first if nobody has yet; None after a fallback."""
    key = member_key(context.settings)
    if key not in stack.outcomes and stack.fallback is None:
        try:
            train_pending(context, stack, method)
        except RuntimeError as error:  # e.g. out of memory for K students, or an op vmap cannot batch
            stack.fallback = f"the stacked pass failed: {' '.join(str(error).split())[:160]}"
            log.warning("%s: %s; the stack's jobs train one at a time", PHASE, stack.fallback)
    return stack.outcomes.get(key)


def train_pending(context: RunContext, stack: Stack, method: Objective) -> None:
    """Train every member without an outcome together, on this run's data, device and teacher.

    The members share everything but the loss's T and term weights (grouping.py), so this run's data,
    batches and teacher (with its cached logits) are theirs too. Every student is built as its solo run
    builds it (seed, then the model), which leaves the global generator where a solo run's training starts.
    """
    pending = stack.pending()
    teacher = method.teacher
    objectives = []
    for settings in pending:
        objective = build_method(settings, teacher.model, context.new_model(settings.student), context.data, context.device)
        objective.teacher.cached_logits = teacher.cached_logits
        objectives.append(objective.to(context.device))
    students = []
    for settings in pending:
        torch.manual_seed(settings.seed)
        students.append(context.new_model(settings.student))
    settings = context.settings
    log.info("%s: training %d students stacked (%s)", PHASE, len(pending), ", ".join(
        f"T={member.T:g} alpha={member.alpha:g}" for member in pending))
    phase = PhaseSettings(settings.student_epochs, settings.make_optimizer, settings.make_scheduler, context.speed)
    outcomes = train_stacked(PHASE, students, objectives, context.batches("train", shuffle=True), context.batches("val"),
                             context.batches("test"), phase)
    for member, outcome in zip(pending, outcomes):
        stack.outcomes[member_key(member)] = outcome


def replay(context: RunContext, outcome: MemberOutcome, student: nn.Module) -> PhaseResult:
    """This run's part of the stacked training, as THE loop would have reported it."""
    context.checkpoints.note_config()  # as THE loop's checkpoint does: a failed run can be resumed (alone)
    observer = context.observer
    observer.phase_started(PHASE, context.settings.student_epochs, outcome.steps_per_epoch)
    if outcome.error is not None:
        raise RunError(outcome.error.message, outcome.error.hint)
    result = outcome.result
    for record in result.history:
        observer.epoch_done(record)
    observer.phase_done(PHASE)
    student.load_state_dict(outcome.state)
    log.info("%s: trained stacked with %d other job(s) in %.1fs", PHASE, outcome.members - 1, result.seconds)
    return result

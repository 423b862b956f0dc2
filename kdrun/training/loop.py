"""THE training loop: teacher, independent student and distilled student all go through train_phase.

Phases differ only in their Objective (plain CE or a distillation method) and their model. Per-step
values stay on the device and are read once per epoch, so the loop never waits on the device
inside an epoch. Model selection uses the validation split; the test split is touched only after
training, once for the best-validation weights and once for the last epoch's.
"""

from __future__ import annotations

import copy
import functools
import math
import operator
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Protocol

import torch
from torch import nn

from kdrun import parallel
from kdrun.data.batches import Batch, InMemoryBatches
from kdrun.errors import RunError
from kdrun.methods.base import Objective, check_teacher_isolated
from kdrun.results import EpochRecord, PhaseResult
from kdrun.training.checkpoint import PhaseCheckpoint, Progress
from kdrun.training.ddp import synchronised
from kdrun.training.speed import FastStep, SpeedSettings

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Optional[Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]]


class PhaseObserver(Protocol):
    """Receives progress events (display, metrics file); must not change training."""

    def phase_started(self, phase: str, epochs: int, steps_per_epoch: int) -> None: ...
    def step_done(self, phase: str) -> None: ...
    def epoch_done(self, record: EpochRecord) -> None: ...
    def phase_done(self, phase: str) -> None: ...


@dataclass
class PhaseSettings:
    epochs: int
    make_optimizer: OptimizerFactory
    make_scheduler: SchedulerFactory = None
    speed: SpeedSettings = SpeedSettings(None, "cpu", False, False)
    checkpoint: Optional[PhaseCheckpoint] = None  # per-epoch state on disk, restored on resume


def train_phase(
    phase: str,
    model: nn.Module,
    objective: Objective,
    train_batches: InMemoryBatches,
    val_batches: InMemoryBatches,
    test_batches: InMemoryBatches,
    settings: PhaseSettings,
    observer: PhaseObserver,
) -> PhaseResult:
    """Train `model` under `objective` for settings.epochs epochs; keep and test the best-val weights.

    The objective's own parameters (adapters, regressors) are optimised with the model; none of
    them, and nothing `objective.train()` reaches, may belong to the teacher.

    Raises:
        RunError: when the loss stops being finite (the phase cannot produce a usable model).
        TeacherLeak: when a teacher module, parameter or buffer is reachable from what is trained (a method bug).
    """
    started = time.perf_counter()
    trainable = list(model.parameters()) + list(objective.parameters())
    check_teacher_isolated(objective, trainable)
    objective = synchronised(model, objective)  # DDP under torchrun; unchanged in one process
    optimizer = settings.make_optimizer(trainable)
    scheduler = settings.make_scheduler(optimizer) if settings.make_scheduler else None
    scaler = settings.speed.gradient_scaler()
    observer.phase_started(phase, settings.epochs, len(train_batches))
    best_state, best_epoch = copy.deepcopy(model.state_dict()), 0
    best_val_acc = evaluate(model, val_batches) if settings.epochs == 0 else -1.0
    history, first_epoch, checkpoint = [], 1, settings.checkpoint
    if checkpoint is not None:
        checkpoint.bind(model, objective, optimizer, scheduler, scaler, train_batches)
        resumed = checkpoint.restore(EpochRecord)
        if resumed is not None:
            first_epoch, best_state, best_epoch, best_val_acc, history = (
                resumed.epoch + 1, resumed.best_state, resumed.best_epoch, resumed.best_val_acc, resumed.history)
    for epoch in range(first_epoch, settings.epochs + 1):
        first_step = (epoch - 1) * len(train_batches)
        objective.begin_epoch(epoch, settings.epochs)
        record = _train_one_epoch(
            phase, epoch, model, objective, optimizer, train_batches, observer, first_step,
            settings.epochs * len(train_batches), settings.speed, scaler,
        )
        record.val_acc = evaluate(model, val_batches)
        if scheduler is not None:
            scheduler.step()
        history.append(record)
        observer.epoch_done(record)
        if record.val_acc > best_val_acc:
            best_val_acc, best_epoch = record.val_acc, epoch
            best_state = copy.deepcopy(model.state_dict())
        if checkpoint is not None:
            checkpoint.save(phase, Progress(epoch, best_state, best_epoch, best_val_acc, history), epoch == settings.epochs)
    test_acc_last = evaluate(model, test_batches)
    test_acc = test_acc_last
    if best_epoch != settings.epochs:  # the best-validation weights are not the last ones: test them too
        model.load_state_dict(best_state)
        test_acc = evaluate(model, test_batches)
    observer.phase_done(phase)
    return PhaseResult(best_epoch, best_val_acc, test_acc, test_acc_last, time.perf_counter() - started, history)


def _train_one_epoch(
    phase: str,
    epoch: int,
    model: nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    batches: InMemoryBatches,
    observer: PhaseObserver,
    first_step: int,
    total_steps: int,
    speed: SpeedSettings,
    scaler: torch.amp.GradScaler | None,
) -> EpochRecord:
    """One pass over the training split for one model, as an EpochRecord (val_acc still NaN)."""
    model.train()
    objective.train()

    def step(index: int, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        objective.begin_step(index, total_steps)
        return objective(model, batch)

    totals = run_epoch(step, optimizer, batches, first_step, speed, scaler, lambda: observer.step_done(phase))
    term_sums, correct = _summed_over_ranks(batches, totals.term_sums, totals.correct)
    samples = batches.num_samples
    loss_means = {name: float(total) / samples for name, total in term_sums.items()}  # one sync per epoch
    check_finite(phase, epoch, loss_means)
    seconds = time.perf_counter() - totals.started
    return EpochRecord(
        phase=phase,
        epoch=epoch,
        loss=loss_means,
        train_acc=float(correct) / samples,
        val_acc=float("nan"),
        lr=totals.lr,
        T=objective.temperature,
        samples_per_s=samples / seconds if seconds > 0 else float("inf"),
        seconds=seconds,
    )


StepFunction = Callable[[int, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class EpochTotals:
    """What one pass over the training split summed up, still on the device."""

    term_sums: dict[str, torch.Tensor]  # sample-weighted sum of every weighted term: () or (K,) per term
    correct: torch.Tensor               # correct training predictions: () or (K,)
    lr: float                           # the learning rate the epoch trained with
    started: float                      # perf_counter at the epoch's start


def run_epoch(step: StepFunction, optimizer: torch.optim.Optimizer, batches: InMemoryBatches, first_step: int,
              speed: SpeedSettings, scaler: torch.amp.GradScaler | None, step_done: Callable[[], None]) -> EpochTotals:
    """THE loop's pass over the training split: forward, backward and optimizer step per batch.

    `step(index, batch)` gives the logits and weighted terms of one batch: one model's ((B, classes),
    scalar terms) or K stacked students' ((K, B, classes), (K,) terms; kdrun/training/stacked/), whose
    summed loss gives each member's parameters the gradient of that member's loss alone. Per-step values
    stay on the device (detached terms and hits instead of running sums: on a small student the
    bookkeeping was a tenth of the step) and are reduced once at the end.
    """
    started = time.perf_counter()
    step_terms: list[dict[str, torch.Tensor]] = []  # per step: the weighted terms, detached
    step_sizes: list[int] = []
    hits: list[torch.Tensor] = []  # per step: bool, prediction == target
    lr = optimizer.param_groups[0]["lr"]
    optimizer_step = FastStep(optimizer)
    for index, batch in enumerate(batches, start=first_step):
        with speed.autocast():
            logits, terms = step(index, batch)
        loss = functools.reduce(operator.add, terms.values())
        if loss.dim():
            loss = loss.sum()
        optimizer_step.clear_gradients()
        if scaler is None:
            loss.backward()
            optimizer_step.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        step_terms.append({name: value.detach() for name, value in terms.items()})
        step_sizes.append(len(batch.targets))
        hits.append(logits.detach().argmax(dim=-1) == batch.targets)
        step_done()
    term_sums, correct = epoch_totals(step_terms, step_sizes, hits, batches.device)
    return EpochTotals(term_sums, correct, lr, started)


def check_finite(phase: str, epoch: int, loss_means: dict[str, float]) -> None:
    """Raises RunError when an epoch's mean loss is NaN or infinite (the phase cannot produce a usable model)."""
    if not all(math.isfinite(value) for value in loss_means.values()):
        raise RunError(
            f"{phase} loss became {loss_means} in epoch {epoch}",
            "lower lr, or check the data for NaN/Inf",
        )


def epoch_totals(
    step_terms: list[dict[str, torch.Tensor]], step_sizes: list[int], hits: list[torch.Tensor], device: torch.device,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Sample-weighted sum of every term and the count of correct predictions, still on the device.

    Shape-generic for stacked students (kdrun/training/stacked/): a step's terms may be (K,) and its
    hits (K, B); the sums are then (K,), one per student.
    """
    term_sums: dict[str, torch.Tensor] = {}
    for name in dict.fromkeys(name for terms in step_terms for name in terms):  # a term may skip steps
        steps = [(terms[name], size) for terms, size in zip(step_terms, step_sizes) if name in terms]
        values = torch.stack([value.float() for value, _ in steps])
        term_sums[name] = torch.tensor([size for _, size in steps], dtype=torch.float32, device=values.device) @ values
    correct = torch.cat(hits, dim=-1).sum(dim=-1) if hits else torch.zeros((), dtype=torch.int64, device=device)
    return term_sums, correct


def evaluate(model: nn.Module, batches: InMemoryBatches) -> float:
    """Accuracy on a split, in eval mode without autograd (so large batches are cheap)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=batches.device)
    with torch.inference_mode():
        for batch in batches:
            correct += (model(batch.inputs).argmax(dim=1) == batch.targets).sum()
    _, correct = _summed_over_ranks(batches, {}, correct)  # under torchrun each rank evaluated its share
    return float(correct) / max(batches.num_samples, 1)


def _summed_over_ranks(batches: InMemoryBatches, term_sums: dict, correct: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Totals over all ranks when `batches` was this rank's share; as they are otherwise.

    Batches that are not sharded (e.g. compression's own evaluation batches) were seen whole by
    every rank, so their counts are already totals and must not be summed again.
    """
    if not batches.topology.sharded:
        return term_sums, correct
    return parallel.sum_across_ranks(term_sums, correct)

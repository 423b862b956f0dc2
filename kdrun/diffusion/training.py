"""THE optimisation loop of `kdrun diffusion`: the teacher's training and every distillation round.

Phases differ only in their objective (denoising or Algorithm 2's two-step target) and settings.
Each phase starts a fresh Adam (the paper resets the optimiser every round), warms the learning
rate up and optionally anneals it linearly to zero (the paper's distillation), clips the gradient
norm, and keeps an exponential moving average of the weights for sampling where configured
(torch.optim.swa_utils). Batches are drawn with replacement from one seeded generator, which also
draws times and noise, so a checkpoint of (weights, EMA, optimiser, generator, step) resumes a
phase bit for bit on the CPU.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from kdrun.diffusion.schedule import CosineSchedule
from kdrun.diffusion.target import distillation_terms
from kdrun.errors import RunError

log = logging.getLogger("kdrun")

Objective = Callable[[nn.Module, torch.Tensor, torch.Generator], dict[str, torch.Tensor]]


class StepObserver(Protocol):
    """Progress events (kdrun.display.ProgressDisplay fits): must not change training."""

    def phase_started(self, phase: str, epochs: int, steps_per_epoch: int) -> None: ...
    def step_done(self, phase: str) -> None: ...
    def phase_done(self, phase: str) -> None: ...


@dataclass(frozen=True)
class PhaseSettings:
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int = 0
    anneal: bool = False      # linear decay of the learning rate to 0 over the phase
    ema_decay: float = 0.0    # 0 = sample with the trained weights themselves
    grad_clip: float = 1.0    # max global gradient norm; 0 = no clipping
    flip: bool = False        # random horizontal flips of the training images
    log_every: int = 100      # steps between loss read-outs (train.log) and possible checkpoints

    def learning_rate(self, step: int) -> float:
        """The rate for 0-based `step`: linear warm-up, then constant or linear decay to 0."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        decay = 1.0 - step / self.steps if self.anneal else 1.0
        return self.lr * warm * decay


@dataclass
class PhaseState:
    """Everything a phase needs to continue: restored in place from a checkpoint."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    ema: Optional[AveragedModel]
    step: int = 0                                   # optimiser steps done
    loss_sums: dict[str, float] = field(default_factory=dict)
    tail_sums: dict[str, float] = field(default_factory=dict)  # the last 10% of the steps
    seconds_before: float = 0.0                     # training time before an interruption
    clock_start: float = field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        """Training time of the phase so far, across interruptions."""
        return self.seconds_before + time.perf_counter() - self.clock_start

    def sampling_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


@dataclass
class PhaseOutcome:
    model: nn.Module            # the weights to sample with (EMA when configured), eval mode
    loss: dict[str, float]      # mean per term over the phase
    loss_last: dict[str, float]  # mean over its last 10% of steps
    seconds: float
    samples_per_s: float


class Checkpointer(Protocol):
    def restore(self, phase: str, state: PhaseState) -> bool: ...
    def save(self, phase: str, state: PhaseState, last: bool) -> None: ...


def new_state(model: nn.Module, settings: PhaseSettings, seed: int, device: torch.device) -> PhaseState:
    """A fresh optimiser (reset every phase), EMA copy and generator for `model`."""
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay), use_buffers=True) if settings.ema_decay > 0 else None
    generator = torch.Generator(device=device).manual_seed(seed)
    return PhaseState(model, optimizer, generator, ema)


def train_phase(phase: str, state: PhaseState, objective: Objective, images: torch.Tensor, settings: PhaseSettings,
                observer: StepObserver, checkpointer: Optional[Checkpointer] = None) -> PhaseOutcome:
    """Run `settings.steps` optimiser steps on `images` ((N, C, H, W) in [-1, 1], on the device).

    Raises:
        RunError: when the loss stops being finite.
    """
    if checkpointer is not None and checkpointer.restore(phase, state):
        log.info("%s: resumed after step %d of %d", phase, state.step, settings.steps)
    state.clock_start = time.perf_counter()
    observer.phase_started(phase, 1, settings.steps)
    for _ in range(state.step):
        observer.step_done(phase)
    tail_start = settings.steps - max(1, settings.steps // 10)
    state.model.train()
    pending: list[dict[str, torch.Tensor]] = []  # detached terms since the last read-out (one sync per interval)
    while state.step < settings.steps:
        pending.append(one_step(state, objective, images, settings))
        state.step += 1
        observer.step_done(phase)
        if state.step % settings.log_every == 0 or state.step == settings.steps:
            accumulate(state, pending, state.step - len(pending), tail_start, phase)
            pending = []
            log.info("%s: step %d/%d  %s", phase, state.step, settings.steps, format_terms(state.loss_sums, state.step))
            if checkpointer is not None:  # it decides whether one is due (trainer.checkpoint_seconds)
                checkpointer.save(phase, state, state.step == settings.steps)
    observer.phase_done(phase)
    seconds = state.seconds()
    tail = settings.steps - tail_start
    model = state.sampling_model().eval()
    return PhaseOutcome(
        model, {name: total / settings.steps for name, total in state.loss_sums.items()},
        {name: total / tail for name, total in state.tail_sums.items()}, seconds,
        settings.steps * settings.batch_size / seconds if seconds > 0 else float("inf"),
    )


def one_step(state: PhaseState, objective: Objective, images: torch.Tensor, settings: PhaseSettings) -> dict[str, torch.Tensor]:
    """Draw a batch, compute the named terms, step the optimiser (and the EMA); returns the detached terms."""
    generator = state.generator
    index = torch.randint(0, images.shape[0], (settings.batch_size,), generator=generator, device=images.device)
    batch = images.index_select(0, index)
    if settings.flip:
        flipped = torch.rand(batch.shape[0], generator=generator, device=batch.device) < 0.5
        batch = torch.where(flipped.view(-1, 1, 1, 1), batch.flip(-1), batch)
    for group in state.optimizer.param_groups:
        group["lr"] = settings.learning_rate(state.step)
    terms = objective(state.model, batch, generator)
    loss = sum(terms.values())
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if settings.grad_clip > 0:
        nn.utils.clip_grad_norm_(state.model.parameters(), settings.grad_clip)
    state.optimizer.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)
    return {name: value.detach() for name, value in terms.items()}


def accumulate(state: PhaseState, pending: list[dict[str, torch.Tensor]], first_step: int, tail_start: int, phase: str) -> None:
    """Add the pending steps' terms to the phase sums (one device sync); a non-finite loss ends the run."""
    if not pending:
        return
    values = {name: torch.stack([terms[name] for terms in pending]).tolist() for name in pending[0]}
    for name, numbers in values.items():
        for offset, number in enumerate(numbers):
            if not math.isfinite(number):
                raise RunError(f"{phase} loss {name} became {number} at step {first_step + offset + 1}",
                               "lower the learning rate or raise the gradient clipping")
            state.loss_sums[name] = state.loss_sums.get(name, 0.0) + number
            if first_step + offset >= tail_start:
                state.tail_sums[name] = state.tail_sums.get(name, 0.0) + number


def format_terms(sums: dict[str, float], steps: int) -> str:
    return "  ".join(f"{name} {total / max(steps, 1):.4f}" for name, total in sums.items())


def frozen(teacher: nn.Module) -> nn.Module:
    """The teacher of a round: eval mode, no gradients; Algorithm 2 only ever evaluates it."""
    teacher.eval().requires_grad_(False)
    for parameter in teacher.parameters():
        parameter.grad = None
    return teacher


def student_from(teacher: nn.Module) -> nn.Module:
    """Algorithm 2's initialisation: the student starts as an independent copy of the teacher, trainable,
    in training mode, without dropout (the paper distils with dropout 0)."""
    student = copy.deepcopy(teacher).requires_grad_(True).train()
    for module in student.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return student


def distill_round(phase: str, teacher: nn.Module, steps: int, images: torch.Tensor, settings: PhaseSettings,
                  schedule: CosineSchedule, seed: int, observer: StepObserver,
                  checkpointer: Optional[Checkpointer] = None) -> PhaseOutcome:
    """One halving: a student of the frozen `teacher` trained to sample in `steps` steps (Algorithm 2)."""
    teacher = frozen(teacher)
    state = new_state(student_from(teacher), settings, seed, images.device)

    def objective(student: nn.Module, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return distillation_terms(student, teacher, x, steps, schedule, generator)

    return train_phase(phase, state, objective, images, settings, observer, checkpointer)

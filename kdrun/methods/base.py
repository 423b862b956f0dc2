"""What every training objective shares: named, weighted loss terms, and a frozen teacher.

An Objective computes, for one batch, the model's logits and a dict of loss terms that are already
weighted, so the training loop can sum them for the gradient and log each under its own name (the
logged terms add up to the total). Objectives are nn.Modules so that any trainable extras a method
needs (adapters, regressors) are optimised with the student; the teacher is deliberately NOT a
registered submodule, so it never reaches the optimizer or `.train()`.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import torch
from torch import nn

from kdrun.data.batches import Batch


class StepOutput(NamedTuple):
    logits: torch.Tensor           # (B, classes), used for training accuracy
    terms: dict[str, torch.Tensor]  # weighted scalar terms; their sum is the loss


class Objective(nn.Module):
    """Base class: subclasses implement `forward(model, batch) -> StepOutput`."""

    #: the temperature in effect, logged with every epoch (None for objectives without one)
    temperature: float | None = None
    #: False for methods that run the teacher themselves (feature taps): caching its logits would be wasted work
    uses_cached_teacher_logits: bool = True
    #: the teacher a distillation method learns from (its logits can be cached per sample); None for plain CE
    teacher: FrozenTeacher | None = None

    def forward(self, model: nn.Module, batch: Batch) -> StepOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def begin_step(self, step: int, total_steps: int) -> None:
        """Called by the loop before every training step (0-based, over the whole phase).

        Schedules (e.g. a decaying temperature) update themselves here; the default does nothing.
        """

    def prepare(self, student: nn.Module, sample_inputs: torch.Tensor) -> None:
        """Called once before training with a student of the right architecture and a sample batch.

        Feature methods discover feature shapes here (a dry forward) and build their adapters, so
        the adapters exist before the optimizer is created. The default does nothing.
        """

    def describe(self) -> str:
        """The loss as a formula, for logs and docs."""
        return type(self).__name__


class CrossEntropy(Objective):
    """Plain supervised training (teacher and independent student): CE(model(x), y)."""

    def forward(self, model: nn.Module, batch: Batch) -> StepOutput:
        logits = model(batch.inputs)
        return StepOutput(logits, {"ce": nn.functional.cross_entropy(logits, batch.targets)})

    def describe(self) -> str:
        return "ce"


class FrozenTeacher:
    """A trained teacher used only for inference: eval mode, no gradients, never optimised.

    Not an nn.Module on purpose: held by an Objective it stays out of `parameters()` and `train()`.
    When the training inputs are deterministic (no random augmentation), `cache_logits` computes the
    teacher's logits once per sample and later batches look them up BY SAMPLE INDEX (never by batch
    position, the bug in recipe R3), which removes the teacher forward from every step.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval().requires_grad_(False)
        for parameter in self.model.parameters():
            parameter.grad = None  # gradients left from the teacher's own training: drop them (and their memory)
        self.cached_logits: torch.Tensor | None = None  # (N, classes), row i = training sample i

    def cache_logits(self, batches: Iterable[Batch], num_samples: int) -> torch.Tensor:
        """Run the teacher once over the training split (any order) and keep logits by sample index."""
        cache: torch.Tensor | None = None
        with torch.inference_mode():
            for batch in batches:
                logits = self.model(batch.inputs)
                if cache is None:
                    cache = torch.empty(num_samples, logits.shape[1], dtype=logits.dtype, device=logits.device)
                cache[batch.indices] = logits
        self.cached_logits = cache.clone() if cache is not None else None  # clone: a normal tensor, not an inference one
        return self.cached_logits

    def logits(self, batch: Batch) -> torch.Tensor:
        """Teacher logits (B, classes) for the batch, outside autograd (from the cache when present)."""
        if self.cached_logits is not None:
            return self.cached_logits.index_select(0, batch.indices)
        with torch.inference_mode():
            logits = self.model(batch.inputs)
        return logits.clone()  # a normal tensor, usable inside the student's autograd graph

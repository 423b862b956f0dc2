"""What every training objective shares: named, weighted loss terms, and a frozen teacher.

An Objective computes, for one batch, the model's logits and a dict of loss terms that are already
weighted, so the training loop can sum them for the gradient and log each under its own name (the
logged terms add up to the total). Objectives are nn.Modules so that any trainable extras a method
needs (adapters, regressors) are optimised with the student; the teacher is deliberately NOT a
registered submodule, so it never reaches the optimizer or `.train()`. Neither is any part of it:
tapped teacher layers are held by the FrozenTeacher, and the training loop refuses (TeacherLeak) an
objective through which a teacher module, parameter or buffer could be trained or switched to train mode.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import torch
from torch import nn

from kdrun.data.batches import Batch
from kdrun.methods.taps import find_layer, forward_with_feature


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
    #: True when forward also computes K stacked students at once: a model returning (K, B, classes), the
    #: temperature and the term weights as (K,) tensors, (K,) terms out (kdrun/methods/losses.py). Sweeps
    #: stack such methods' students (hydra/launcher=kdrun_stacked); the others train one at a time.
    stacks_members: bool = False

    def forward(self, model: nn.Module, batch: Batch) -> StepOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def begin_step(self, step: int, total_steps: int) -> None:
        """Called by the loop before every training step (0-based, over the whole phase).

        Schedules (e.g. a decaying temperature) update themselves here; the default does nothing.
        """

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the loop before every epoch (1-based, of `epochs` in the phase; also on resume).

        Epoch-wise warm-ups (DKD's, as in mdistiller) set themselves here; the default does nothing.
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
        # Tapped layers live here, in a plain dict of a non-Module: stored on an Objective they would
        # become its children, and `objective.train()` / `parameters()` would reach into the teacher.
        self._layers: dict[str, nn.Module] = {}

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

    def layer(self, path: str) -> nn.Module:
        """The teacher's submodule at `path` (a ConfigError listing similar names if there is none)."""
        if path not in self._layers:
            self._layers[path] = find_layer(self.model, path, "teacher")
        return self._layers[path]

    def logits_and_feature(self, inputs: torch.Tensor, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, output of layer `path`) from one teacher forward, outside autograd."""
        with torch.inference_mode():
            logits, feature = forward_with_feature(self.model, self.layer(path), inputs)
        return logits.clone(), feature.clone()  # normal tensors, usable inside the student's autograd graph

    def tensors(self) -> list[torch.Tensor]:
        """Every parameter and buffer of the teacher (what must never be trained or changed)."""
        return [*self.model.parameters(), *self.model.buffers()]

    def logits(self, batch: Batch) -> torch.Tensor:
        """Teacher logits (B, classes) for the batch, outside autograd (from the cache when present)."""
        if self.cached_logits is not None:
            return self.cached_logits.index_select(0, batch.indices)
        with torch.inference_mode():
            logits = self.model(batch.inputs)
        return logits.clone()  # a normal tensor, usable inside the student's autograd graph


class TeacherLeak(RuntimeError):
    """An objective or model exposes part of the teacher to training: a bug in a method, not bad input."""


def check_teacher_isolated(objective: nn.Module, trainable: Iterable[torch.Tensor]) -> None:
    """Refuse to train when anything the optimizer or `objective.train()` would reach belongs to the teacher.

    `trainable` are the tensors about to be given to the optimizer (model + objective parameters).
    Tensors are compared by identity and by storage, so a view or re-wrapped Parameter is caught too.

    Raises:
        TeacherLeak: naming the first offending tensor or module.
    """
    teacher = getattr(objective, "teacher", None)
    if not isinstance(teacher, FrozenTeacher):
        return
    frozen = teacher.tensors()
    frozen_ids = {id(tensor) for tensor in frozen}
    frozen_storage = {tensor.untyped_storage().data_ptr() for tensor in frozen if tensor.numel() > 0}
    teacher_modules = {id(module) for module in teacher.model.modules()}
    for name, module in objective.named_modules():
        if id(module) in teacher_modules:
            raise TeacherLeak(f"objective submodule '{name}' ({type(module).__name__}) belongs to the teacher: "
                              "objective.train() would put it in training mode; keep teacher layers in FrozenTeacher")
    named = [*((f"objective buffer '{n}'", b) for n, b in objective.named_buffers()),
             *((f"a trainable tensor of shape {tuple(t.shape)}", t) for t in trainable)]
    for what, tensor in named:
        if id(tensor) in frozen_ids or (tensor.numel() > 0 and tensor.untyped_storage().data_ptr() in frozen_storage):
            raise TeacherLeak(f"{what} is the teacher's: it would be optimised or changed during distillation")

"""`basic`: Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network" (recipe R1 #1).

    loss = CE(s, y) + T^2 * KL(softmax(t / T) || softmax(s / T))

The T^2 factor keeps the soft-target gradients on the same scale as the hard ones when T changes.
`alpha` is not used (both weights are 1; `method.weights` can still override them).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from kdrun.data.batches import Batch
from kdrun.methods.base import FrozenTeacher, StepOutput
from kdrun.methods.common import DistillationObjective
from kdrun.methods.losses import cross_entropy, soft_target_kl
from kdrun.methods.registry import METHODS


@METHODS.register("basic")
class BasicKD(DistillationObjective):
    stacks_members = True  # its losses take stacked members' logits (kdrun/methods/losses.py)

    def __init__(
        self, teacher: FrozenTeacher, temperature: float, alpha: float,
        weights: dict[str, float] | None = None, schedule: dict[str, Any] | str | None = None,
    ) -> None:
        del alpha  # the basic form adds both terms unweighted
        super().__init__(teacher, temperature, {"ce": 1.0, "kd": 1.0}, weights, schedule)

    def forward(self, model: nn.Module, batch: Batch) -> StepOutput:
        teacher_logits = self.teacher.logits(batch)
        logits = model(batch.inputs)
        kd = self.temperature**2 * soft_target_kl(logits, teacher_logits, self.temperature)
        return StepOutput(logits, self.weigh({"ce": cross_entropy(logits, batch.targets), "kd": kd}))

    def describe(self) -> str:
        return f"ce + T^2 * KL (T={self.temperature:g})"

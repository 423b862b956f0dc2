"""`hard`: hard-label distillation (as in DeiT's hard variant, Touvron et al. 2021).

    loss = (1 - alpha) * CE(s, y) + alpha * CE(s, argmax t)

The teacher's decision replaces the soft targets; `alpha` weighs the teacher term (`kd`). The
temperature does not change an argmax, so T (and any schedule) has no effect on the loss.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from kdrun.data.batches import Batch
from kdrun.methods.base import FrozenTeacher, StepOutput
from kdrun.methods.common import DistillationObjective
from kdrun.methods.losses import cross_entropy
from kdrun.methods.registry import METHODS


@METHODS.register("hard")
class HardKD(DistillationObjective):
    stacks_members = True  # its losses take stacked members' logits (kdrun/methods/losses.py)

    def __init__(
        self, teacher: FrozenTeacher, temperature: float, alpha: float,
        weights: dict[str, float] | None = None, schedule: dict[str, Any] | str | None = None,
    ) -> None:
        super().__init__(teacher, temperature, {"ce": 1 - float(alpha), "kd": float(alpha)}, weights, schedule)

    def forward(self, model: nn.Module, batch: Batch) -> StepOutput:
        teacher_labels = self.teacher.logits(batch).argmax(dim=1)
        logits = model(batch.inputs)
        ce = cross_entropy(logits, batch.targets)
        kd = cross_entropy(logits, teacher_labels)
        return StepOutput(logits, self.weigh({"ce": ce, "kd": kd}))

    def describe(self) -> str:
        return f"{self.describe_weights()} (kd = CE on the teacher's argmax)"

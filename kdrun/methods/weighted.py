"""`weighted`: Hinton et al. 2015 with a convex weight (recipe R1 #2 "responsible", R3).

    loss = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

`alpha` weighs the DISTILLATION term (torchdistill's alpha weighs CE; R4's 0.3/0.7 split is
alpha=0.7 here, or `method.weights: {ce: 0.3, kd: 0.7}`). `scale_by_T2=false` drops the T^2
factor, as R4's original loss does.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from kdrun.data.batches import Batch
from kdrun.methods.base import FrozenTeacher, StepOutput
from kdrun.methods.common import DistillationObjective
from kdrun.methods.losses import cross_entropy, soft_target_kl
from kdrun.methods.registry import METHODS


@METHODS.register("weighted")
class WeightedKD(DistillationObjective):
    stacks_members = True  # its losses take stacked members' logits (kdrun/methods/losses.py)

    def __init__(
        self, teacher: FrozenTeacher, temperature: float, alpha: float, scale_by_T2: bool = True,
        weights: dict[str, float] | None = None, schedule: dict[str, Any] | str | None = None,
    ) -> None:
        super().__init__(teacher, temperature, {"ce": 1 - float(alpha), "kd": float(alpha)}, weights, schedule)
        self.alpha = float(alpha)
        self.scale_by_T2 = bool(scale_by_T2)

    def forward(self, model: nn.Module, batch: Batch) -> StepOutput:
        teacher_logits = self.teacher.logits(batch)
        logits = model(batch.inputs)
        ce = cross_entropy(logits, batch.targets)
        scale = self.temperature**2 if self.scale_by_T2 else 1.0
        kd = scale * soft_target_kl(logits, teacher_logits, self.temperature)
        return StepOutput(logits, self.weigh({"ce": ce, "kd": kd}))

    def describe(self) -> str:
        scale = "T^2 * " if self.scale_by_T2 else ""
        return f"{self.weights['ce']:g} * ce + {self.weights['kd']:g} * {scale}KL (T={self.temperature:g})"

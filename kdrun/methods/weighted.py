"""`weighted`: Hinton et al. 2015 with a convex weight (recipe R1 #2 "responsible", R3).

    loss = (1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

`alpha` weighs the DISTILLATION term (torchdistill's alpha weighs CE; R4's 0.3/0.7 split is
alpha=0.7 here). `scale_by_T2=false` drops the T^2 factor, as R4's original loss does.
"""

from __future__ import annotations

from torch import nn
from torch.nn import functional

from kdrun.data.batches import Batch
from kdrun.methods.base import FrozenTeacher, Objective, StepOutput
from kdrun.methods.losses import soft_target_kl
from kdrun.methods.registry import METHODS


@METHODS.register("weighted")
class WeightedKD(Objective):
    def __init__(self, teacher: FrozenTeacher, temperature: float, alpha: float, scale_by_T2: bool = True) -> None:
        super().__init__()
        self.teacher = teacher
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.kd_scale = self.temperature**2 if scale_by_T2 else 1.0

    def forward(self, model: nn.Module, batch: Batch) -> StepOutput:
        teacher_logits = self.teacher.logits(batch)
        logits = model(batch.inputs)
        ce = functional.cross_entropy(logits, batch.targets)
        kd = soft_target_kl(logits, teacher_logits, self.temperature)
        return StepOutput(logits, {"ce": (1 - self.alpha) * ce, "kd": self.alpha * self.kd_scale * kd})

    def describe(self) -> str:
        scale = "T^2 * " if self.kd_scale != 1.0 or self.temperature == 1.0 else ""
        return f"{1 - self.alpha:g} * ce + {self.alpha:g} * {scale}KL (T={self.temperature:g})"

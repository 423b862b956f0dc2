"""`deit`: distillation through a distillation token (Touvron et al. 2021, DeiT; recipe R2).

    soft: loss = (1 - alpha) * CE(cls_head, y) + alpha * T^2 * KL(softmax(t / T) || softmax(dist_head / T))
    hard: loss = (1 - alpha) * CE(cls_head, y) + alpha * CE(dist_head, argmax t)

The student must expose both heads (`forward_heads`, e.g. student=deit_tiny); the reported logits
are the average of the two heads, DeiT's inference rule. `alpha` weighs `kd` (the paper's hard
distillation uses 1/2 and 1/2, i.e. alpha=0.5).

Soft KL reduction: `reduction: batchmean` (default, recipe R2 and every other kdrun KL) divides the
class-summed KL by the batch size; `reduction: mean` divides it by batch x classes, as the official
DeiT code does (`kl_div(..., reduction='sum') * T^2 / outputs_kd.numel()`), so its kd term is C
times smaller (10x on a 10-class dataset) at the same alpha.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional

from kdrun.data.batches import Batch
from kdrun.errors import ConfigError
from kdrun.methods.base import FrozenTeacher, StepOutput
from kdrun.methods.common import DistillationObjective
from kdrun.methods.losses import soft_target_kl
from kdrun.methods.registry import METHODS

MODES = ("soft", "hard")
REDUCTIONS = ("batchmean", "mean")  # soft KL divided by the batch size, or by batch x classes (official DeiT)


@METHODS.register("deit")
class DeiTDistillation(DistillationObjective):
    def __init__(
        self, teacher: FrozenTeacher, temperature: float, alpha: float, distillation: str = "soft",
        reduction: str = "batchmean", weights: dict[str, float] | None = None, schedule: dict[str, Any] | str | None = None,
    ) -> None:
        for key, value, choices in (("distillation", distillation, MODES), ("reduction", reduction, REDUCTIONS)):
            if value not in choices:
                raise ConfigError(f"method.{key}='{value}' is unknown", f"choose one of: {', '.join(choices)}")
        super().__init__(teacher, temperature, {"ce": 1 - float(alpha), "kd": float(alpha)}, weights, schedule)
        self.distillation = distillation
        self.reduction = reduction

    def prepare(self, student: nn.Module, sample_inputs: torch.Tensor) -> None:
        if not callable(getattr(student, "forward_heads", None)):
            raise ConfigError(
                f"method=deit needs a student with a distillation token, {type(student).__name__} has none",
                "use student=deit_tiny",
            )

    def forward(self, model: nn.Module, batch: Batch) -> StepOutput:
        teacher_logits = self.teacher.logits(batch)
        heads = model.forward_heads(batch.inputs)
        ce = functional.cross_entropy(heads.cls, batch.targets)
        if self.distillation == "hard":
            kd = functional.cross_entropy(heads.distillation, teacher_logits.argmax(dim=1))
        else:
            kd = self.temperature**2 * soft_target_kl(heads.distillation, teacher_logits, self.temperature)
            if self.reduction == "mean":
                kd = kd / heads.distillation.shape[1]  # official DeiT: / (batch x classes)
        return StepOutput((heads.cls + heads.distillation) / 2, self.weigh({"ce": ce, "kd": kd}))

    def describe(self) -> str:
        return f"{self.describe_weights()} ({self.distillation} distillation token, T={self.temperature:g})"

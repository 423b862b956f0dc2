"""`dkd`: Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022).

With b = [p_target, 1 - p_target] (binary target / non-target split) and p^ the distribution over
the NON-target classes only, all at temperature T:

    TCKD = KL(b_t || b_s),   NCKD = KL(p^_t || p^_s)
    loss = (1 - alpha) * CE(s, y) + alpha * T^2 * (dkd_alpha * TCKD + beta * NCKD)

Classical KD decomposes per sample as KL(p_t || p_s) = TCKD + (1 - p_t,target) * NCKD (eq. 4 of the
paper); DKD removes the (1 - p_t,target) factor that suppresses NCKD for confident teachers.
Paper defaults: dkd_alpha=1, beta=8, T=4. kdrun's `alpha` weighs the whole distillation part.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional

from kdrun.data.batches import Batch
from kdrun.methods.base import FrozenTeacher, StepOutput
from kdrun.methods.common import DistillationObjective
from kdrun.methods.registry import METHODS

MASK = 1000.0  # subtracted from the target logit (after / T) so it vanishes from the non-target softmax


def decoupled_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (TCKD, NCKD), each of shape (B,), at `temperature`, without the T^2 factor."""
    target_mask = functional.one_hot(targets, student_logits.shape[1]).bool()  # (B, C)
    student_probs = functional.softmax(student_logits / temperature, dim=1)
    teacher_probs = functional.softmax(teacher_logits / temperature, dim=1)
    student_binary = _binary(student_probs, target_mask)
    teacher_binary = _binary(teacher_probs, target_mask)
    tckd = (teacher_binary * (teacher_binary.clamp_min(1e-12).log() - student_binary.clamp_min(1e-12).log())).sum(1)
    student_rest = functional.log_softmax(student_logits / temperature - MASK * target_mask, dim=1)
    teacher_rest = functional.softmax(teacher_logits / temperature - MASK * target_mask, dim=1)
    nckd = functional.kl_div(student_rest, teacher_rest, reduction="none").sum(1)
    return tckd, nckd


def _binary(probs: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """(B, 2): probability of the target class and of all the others together."""
    target = (probs * target_mask).sum(1, keepdim=True)
    return torch.cat([target, 1 - target], dim=1)


@METHODS.register("dkd")
class DecoupledKD(DistillationObjective):
    def __init__(
        self, teacher: FrozenTeacher, temperature: float, alpha: float, dkd_alpha: float = 1.0, beta: float = 8.0,
        weights: dict[str, float] | None = None, schedule: dict[str, Any] | str | None = None,
    ) -> None:
        distill = float(alpha)
        defaults = {"ce": 1 - distill, "tckd": distill * float(dkd_alpha), "nckd": distill * float(beta)}
        super().__init__(teacher, temperature, defaults, weights, schedule)

    def forward(self, model: nn.Module, batch: Batch) -> StepOutput:
        teacher_logits = self.teacher.logits(batch)
        logits = model(batch.inputs)
        tckd, nckd = decoupled_kl(logits, teacher_logits, batch.targets, self.temperature)
        scale = self.temperature**2
        raw = {"ce": functional.cross_entropy(logits, batch.targets), "tckd": scale * tckd.mean(), "nckd": scale * nckd.mean()}
        return StepOutput(logits, self.weigh(raw))

    def describe(self) -> str:
        return f"{self.describe_weights()} (tckd, nckd scaled by T^2, T={self.temperature:g})"

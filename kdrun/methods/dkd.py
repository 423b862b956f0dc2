"""`dkd`: Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022).

With b = [p_target, 1 - p_target] (binary target / non-target split) and p^ the distribution over
the NON-target classes only, all at temperature T:

    TCKD = KL(b_t || b_s),   NCKD = KL(p^_t || p^_s)
    loss = (1 - alpha) * CE(s, y) + w(epoch) * alpha * T^2 * (dkd_alpha * TCKD + beta * NCKD)

Classical KD decomposes per sample as KL(p_t || p_s) = TCKD + (1 - p_t,target) * NCKD (eq. 4 of the
paper); DKD removes the (1 - p_t,target) factor that suppresses NCKD for confident teachers.
Paper defaults: dkd_alpha=1, beta=8, T=4. kdrun's `alpha` weighs the whole distillation part.

Everything is computed in log space: log b = [log p_y, logsumexp_{i != y} log p_i] and log p^ =
log_softmax over the non-target logits alone. Taking log(1e-12-clamped probabilities) instead (as
the authors' code does, without the clamp) loses both value and gradient once the student's target
probability underflows: a confidently wrong student, the case distillation should correct most.

w(epoch) is mdistiller's linear warm-up, min(epoch / warmup_epochs, 1) for the 1-based epoch of the
phase; `warmup_epochs: auto` takes mdistiller's share of the training (20 of 240 epochs, 1/12), so a
240-epoch run warms up over 20 epochs, a 20-epoch run over its first 2 (weights 0.6, 1, 1, ...) and a
run of 12 epochs or fewer not at all. `warmup_epochs: 20` is mdistiller's exactly; 0 switches it off.
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
from kdrun.methods.registry import METHODS

WARMUP_SHARE = 20 / 240  # mdistiller: DKD's terms reach full weight after 20 of its 240 epochs


def binary_log_probs(logits: torch.Tensor, target_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, 2): log p(target) and log p(any other class) at `temperature`, both exact in log space."""
    scaled = logits / temperature
    total = torch.logsumexp(scaled, dim=1)
    target = (scaled * target_mask).sum(dim=1)  # the target's logit
    rest = scaled.masked_fill(target_mask, float("-inf")).logsumexp(dim=1)
    return torch.stack([target - total, rest - total], dim=1)


def non_target_log_probs(logits: torch.Tensor, target_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, C): log_softmax over the non-target classes only; 0 at the target (its terms are dropped)."""
    rest = functional.log_softmax((logits / temperature).masked_fill(target_mask, float("-inf")), dim=1)
    return rest.masked_fill(target_mask, 0.0)


def decoupled_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (TCKD, NCKD), each of shape (B,), at `temperature`, without the T^2 factor."""
    target_mask = functional.one_hot(targets, student_logits.shape[1]).bool()  # (B, C)
    tckd = _kl_rows(binary_log_probs(student_logits, target_mask, temperature),
                    binary_log_probs(teacher_logits, target_mask, temperature))
    teacher_rest = non_target_log_probs(teacher_logits, target_mask, temperature)
    nckd = _kl_rows(non_target_log_probs(student_logits, target_mask, temperature),
                    teacher_rest, weights=teacher_rest.exp().masked_fill(target_mask, 0.0))
    return tckd, nckd


def _kl_rows(student_log: torch.Tensor, teacher_log: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i q_i (log q_i - log p_i) per row, q = exp(teacher_log) unless `weights` gives it."""
    q = teacher_log.exp() if weights is None else weights
    return (q * (teacher_log - student_log)).sum(dim=1)


@METHODS.register("dkd")
class DecoupledKD(DistillationObjective):
    def __init__(
        self, teacher: FrozenTeacher, temperature: float, alpha: float, dkd_alpha: float = 1.0, beta: float = 8.0,
        warmup_epochs: float | str = "auto", weights: dict[str, float] | None = None,
        schedule: dict[str, Any] | str | None = None,
    ) -> None:
        distill = float(alpha)
        defaults = {"ce": 1 - distill, "tckd": distill * float(dkd_alpha), "nckd": distill * float(beta)}
        super().__init__(teacher, temperature, defaults, weights, schedule)
        if warmup_epochs != "auto" and (isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, (int, float))
                                        or warmup_epochs < 0):
            raise ConfigError(f"method.warmup_epochs={warmup_epochs} must be auto or a number >= 0",
                              "auto = 1/12 of the phase (mdistiller: 20 of 240 epochs), 0 = no warm-up")
        self.warmup_epochs = warmup_epochs
        self.warmup = 1.0  # the weight in effect this epoch, set by begin_epoch

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        """mdistiller's linear warm-up: the DKD terms weigh min(epoch / warmup_epochs, 1) in this epoch."""
        span = epochs * WARMUP_SHARE if self.warmup_epochs == "auto" else float(self.warmup_epochs)
        self.warmup = min(epoch / span, 1.0) if span > 0 else 1.0

    def forward(self, model: nn.Module, batch: Batch) -> StepOutput:
        teacher_logits = self.teacher.logits(batch)
        logits = model(batch.inputs)
        tckd, nckd = decoupled_kl(logits, teacher_logits, batch.targets, self.temperature)
        scale = self.warmup * self.temperature**2
        raw = {"ce": functional.cross_entropy(logits, batch.targets), "tckd": scale * tckd.mean(), "nckd": scale * nckd.mean()}
        return StepOutput(logits, self.weigh(raw))

    def describe(self) -> str:
        return f"{self.describe_weights()} (tckd, nckd scaled by T^2 and the warm-up, T={self.temperature:g})"

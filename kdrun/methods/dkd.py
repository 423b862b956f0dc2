"""`dkd`: Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022).

With b = [p_target, 1 - p_target] (binary target / non-target split) and p^ the distribution over
the NON-target classes only, all at temperature T:

    TCKD = KL(b_t || b_s),   NCKD = KL(p^_t || p^_s)
    loss = (1 - alpha) * CE(s, y) + w(epoch) * alpha * T^2 * (dkd_alpha * TCKD + beta * NCKD)

Classical KD decomposes per sample as KL(p_t || p_s) = TCKD + (1 - p_t,target) * NCKD (eq. 4 of the
paper); DKD removes the (1 - p_t,target) factor that suppresses NCKD for confident teachers.
Paper defaults: dkd_alpha=1, beta=8, T=4. kdrun's `alpha` weighs the whole distillation part.

The student's side is computed in log space: log b = [s_y - logsumexp(s), logsumexp_{i != y} s_i -
logsumexp(s)] (at T) and log p^ = log_softmax over the non-target logits alone (the target excluded
exactly, not masked with -1000). Taking the log of (1e-12-clamped) probabilities instead, as kdrun
did (the authors' code takes the log unclamped), loses both value and gradient once the student's
target probability underflows: a confidently wrong student, the case distillation should correct most.

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
from kdrun.methods.losses import cross_entropy, per_member
from kdrun.methods.registry import METHODS

Temperature = float | torch.Tensor  # a (K,) tensor for stacked members
WARMUP_SHARE = 20 / 240  # mdistiller: DKD's terms reach full weight after 20 of its 240 epochs


def binary_log_probs(logits: torch.Tensor, target_mask: torch.Tensor, temperature: Temperature) -> torch.Tensor:
    """(B, 2): log p(target) and log p(any other class) at `temperature`, both in log space (logsumexp)."""
    scaled = logits / per_member(temperature)
    total = torch.logsumexp(scaled, dim=-1)
    target = (scaled * target_mask).sum(dim=-1)  # the target's logit
    rest = scaled.masked_fill(target_mask, float("-inf")).logsumexp(dim=-1)
    return torch.stack([target - total, rest - total], dim=-1)


def binary_probs(logits: torch.Tensor, target_mask: torch.Tensor, temperature: Temperature) -> torch.Tensor:
    """(B, 2): p(target) and p(any other class); the teacher's side (no gradient, a 0 is fine for kl_div)."""
    probs = functional.softmax(logits / per_member(temperature), dim=-1)
    return torch.stack([(probs * target_mask).sum(dim=-1), (probs * ~target_mask).sum(dim=-1)], dim=-1)


def non_target_logits(logits: torch.Tensor, target_mask: torch.Tensor, temperature: Temperature) -> torch.Tensor:
    """logits / T with the target class removed (-inf), so a softmax runs over the other classes only."""
    return (logits / per_member(temperature)).masked_fill(target_mask, float("-inf"))


def decoupled_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, temperature: Temperature
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (TCKD, NCKD), each of shape (B,), at `temperature`, without the T^2 factor.

    The student's side is in log space (its gradient must survive); the teacher's enters as
    probabilities, as `kl_div` expects (an underflowed teacher probability contributes 0 log 0 = 0).
    Stacked members (kdrun/methods/losses.py): (K, B, C) student logits and a (K,) temperature -> (K, B) each.
    """
    target_mask = functional.one_hot(targets, student_logits.shape[-1]).bool()  # (B, C)
    tckd = functional.kl_div(binary_log_probs(student_logits, target_mask, temperature),
                             binary_probs(teacher_logits, target_mask, temperature), reduction="none").sum(-1)
    student_rest = functional.log_softmax(non_target_logits(student_logits, target_mask, temperature), dim=-1)
    teacher_rest = functional.softmax(non_target_logits(teacher_logits, target_mask, temperature), dim=-1)  # 0 at the target
    nckd = functional.kl_div(student_rest.masked_fill(target_mask, 0.0), teacher_rest, reduction="none").sum(-1)
    return tckd, nckd


@METHODS.register("dkd")
class DecoupledKD(DistillationObjective):
    stacks_members = True  # its losses take stacked members' logits (kdrun/methods/losses.py)

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
        raw = {"ce": cross_entropy(logits, batch.targets), "tckd": scale * tckd.mean(dim=-1), "nckd": scale * nckd.mean(dim=-1)}
        return StepOutput(logits, self.weigh(raw))

    def describe(self) -> str:
        return f"{self.describe_weights()} (tckd, nckd scaled by T^2 and the warm-up, T={self.temperature:g})"

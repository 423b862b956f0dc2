"""Loss functions shared by distillation methods, each with its formula."""

from __future__ import annotations

import torch
from torch.nn import functional


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)), summed over classes, averaged over the batch.

    `batchmean` is the mathematically correct reduction; `nn.KLDivLoss()`'s default 'mean' also
    divides by the number of classes (the mistake in recipes R1 and R3). The student side enters as
    log-probabilities, as KLDivLoss requires. No T^2 factor here: callers apply it.
    """
    student_log_probs = functional.log_softmax(student_logits / temperature, dim=1)
    teacher_log_probs = functional.log_softmax(teacher_logits / temperature, dim=1)
    # kl_div(..., reduction="batchmean", log_target=True) written out: torch.func.vmap has no batching
    # rule for kl_div and would loop over the members of a stack (kdrun/training/stacked/)
    pointwise = teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)
    return pointwise.sum() / student_logits.shape[0]

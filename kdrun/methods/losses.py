"""Loss functions shared by distillation methods, each with its formula.

Stacked members: a sweep's students trained together (kdrun/training/stacked/) give logits of shape
(K, B, classes), one row of B per member, with a temperature of shape (K,). The functions below
then return one value per member, (K,), each exactly its member's loss (mean over ITS batch): the
stack computes K losses in one call instead of vmapping the loss, whose batching rules cost more
than the whole loss of a small student (docs/stacked.md). Plain (B, classes) logits take the
unchanged single-model path.
"""

from __future__ import annotations

import torch
from torch.nn import functional


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)), summed over classes, averaged over the batch.

    `batchmean` is the mathematically correct reduction; `nn.KLDivLoss()`'s default 'mean' also
    divides by the number of classes (the mistake in recipes R1 and R3). The student side enters as
    log-probabilities, as KLDivLoss requires. No T^2 factor here: callers apply it.
    Stacked members (module docstring): (K, B, classes) student logits, (B, classes) or (K, B, classes)
    teacher logits, a (K,) temperature -> (K,).
    """
    if student_logits.dim() > 2:
        return _members_soft_target_kl(student_logits, teacher_logits, torch.as_tensor(temperature))
    student_log_probs = functional.log_softmax(student_logits / temperature, dim=1)
    teacher_log_probs = functional.log_softmax(teacher_logits / temperature, dim=1)
    # kl_div(..., reduction="batchmean", log_target=True) written out: torch.func.vmap has no batching
    # rule for kl_div and would loop over the members of a stack (kdrun/training/stacked/)
    pointwise = teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)
    return pointwise.sum() / student_logits.shape[0]


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the labels, averaged over the batch; (K, B, classes) stacked members -> (K,)."""
    if logits.dim() == 2:
        return functional.cross_entropy(logits, targets)
    members, batch, classes = logits.shape
    per_sample = functional.cross_entropy(logits.reshape(members * batch, classes), targets.repeat(members), reduction="none")
    return per_sample.view(members, batch).mean(dim=1)


def _members_soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """soft_target_kl per stacked member: (K, B, classes) student logits, a scalar or (K,) temperature -> (K,)."""
    scale = per_member(temperature)
    student_log_probs = functional.log_softmax(student_logits / scale, dim=-1)
    teacher_log_probs = functional.log_softmax(teacher_logits / scale, dim=-1)
    pointwise = teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)
    return pointwise.sum(dim=(-2, -1)) / student_logits.shape[-2]


def per_member(temperature: float | torch.Tensor) -> float | torch.Tensor:
    """The temperature shaped to divide (B, classes) or (K, B, classes) logits: a (K,) one becomes (K, 1, 1)."""
    if isinstance(temperature, torch.Tensor) and temperature.dim() == 1:
        return temperature.reshape(-1, 1, 1)
    return temperature

"""DKD against mdistiller's formula (re-derived in float64, tests/test_loss_oracles.py) where it is hard:
extreme logits (value and gradient must survive a confidently wrong student) and the warm-up."""

from __future__ import annotations

import pytest
import torch
from test_loss_oracles import (
    ALPHA,
    F64,
    STUDENT,
    STUDENT_FEATURE,
    TARGETS,
    TEACHER,
    TEACHER_FEATURE,
    B,
    Student,
    T,
    Teacher,
    kdrun_terms,
    mdistiller_dkd,
    probs,
)

from kdrun.data.batches import Batch
from kdrun.methods import METHODS, FrozenTeacher
from kdrun.methods.dkd import decoupled_kl

# -- DKD at extreme logits: log space keeps value and gradient ------------------------------------------
EXTREME = {  # (student, teacher, target, T): a confidently wrong student; logits x10 of a random batch
    "target 28 below the max, T=1": ([[28.0, 0.0, 1.0, -2.0]], [[0.0, 5.0, 1.0, -1.0]], [1], 1.0),
    "logits x10, T=1": ((10 * STUDENT).tolist(), (10 * TEACHER).tolist(), TARGETS.tolist(), 1.0),
    "logits x10, T=4": ((10 * STUDENT).tolist(), (10 * TEACHER).tolist(), TARGETS.tolist(), 4.0),
}


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("case", EXTREME)
def test_dkd_value_and_gradient_at_extreme_logits(case, dtype):
    student, teacher, targets, temperature = EXTREME[case]
    s = torch.tensor(student, dtype=dtype, requires_grad=True)
    tckd, nckd = decoupled_kl(s, torch.tensor(teacher, dtype=dtype), torch.tensor(targets), temperature)
    (temperature**2 * (tckd.mean() + 8 * nckd.mean())).backward()
    s64 = torch.tensor(student, dtype=F64, requires_grad=True)
    ref_tckd, ref_nckd = mdistiller_dkd(s64, torch.tensor(teacher, dtype=F64), torch.tensor(targets), temperature)
    (ref_tckd + 8 * ref_nckd).backward()
    tolerance = 1e-5 if dtype == torch.float32 else 1e-10
    assert (temperature**2 * tckd.mean()).item() == pytest.approx(ref_tckd.item(), rel=tolerance)
    assert (temperature**2 * nckd.mean()).item() == pytest.approx(ref_nckd.item(), rel=tolerance)
    assert torch.allclose(s.grad.double(), s64.grad, rtol=tolerance, atol=tolerance * s64.grad.abs().max().item())


def test_dkd_target_gradient_of_a_confidently_wrong_student_is_not_clipped():
    """The issue's example: p_s(target) = e^-28 < 1e-12; TCKD's gradient w.r.t. the target logit is
    p_s - p_t of the target's binary split, about -0.98, not 0 (what log(clamp(p, 1e-12)) gave)."""
    s = torch.tensor([[28.0, 0.0, 1.0, -2.0]], requires_grad=True)
    tckd, _ = decoupled_kl(s, torch.tensor([[0.0, 5.0, 1.0, -1.0]]), torch.tensor([1]), 1.0)
    tckd.sum().backward()
    p_teacher = probs(torch.tensor([[0.0, 5.0, 1.0, -1.0]], dtype=F64), 1.0)[0, 1].item()
    assert s.grad[0, 1].item() == pytest.approx(-p_teacher, rel=1e-5) and p_teacher > 0.97
    assert tckd.item() == pytest.approx(p_teacher * 28.0, rel=0.02)  # ~ p_t * (-log p_s): the unclipped scale


# -- DKD warm-up: mdistiller's min(epoch / warmup, 1) ---------------------------------------------------
@pytest.mark.parametrize(("warmup", "epochs", "expected"), [
    (20, 240, [1 / 20, 2 / 20, 1.0]),          # mdistiller's setting: epochs 1, 2, 20
    ("auto", 240, [1 / 20, 2 / 20, 1.0]),      # auto = 1/12 of the phase = mdistiller's 20 of 240
    ("auto", 20, [0.6, 1.0, 1.0]),             # 20 epochs: over the first 1 2/3
    ("auto", 3, [1.0, 1.0, 1.0]),              # a 3-epoch run: no warm-up
    (0, 240, [1.0, 1.0, 1.0]),                 # off
])
def test_dkd_warmup_weights_the_dkd_terms_per_epoch(warmup, epochs, expected):
    method = METHODS.build("dkd", FrozenTeacher(Teacher(TEACHER, TEACHER_FEATURE)), T, ALPHA, warmup_epochs=warmup)
    full = kdrun_terms("dkd", {}, Student(STUDENT, STUDENT_FEATURE))[1]
    for epoch, weight in zip((1, 2, 20 if epochs == 240 else epochs), expected):
        method.begin_epoch(epoch, epochs)
        _, terms = method(Student(STUDENT, STUDENT_FEATURE), Batch(torch.zeros(B, 1), TARGETS, torch.arange(B)))
        assert terms["ce"].item() == pytest.approx(full["ce"].item(), rel=1e-12)  # CE is never warmed up
        for name in ("tckd", "nckd"):
            assert terms[name].item() == pytest.approx(weight * full[name].item(), rel=1e-12)

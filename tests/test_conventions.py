"""docs/methods.md's conventions table: every documented override composes and gives the reference's loss.

Each row is composed through Hydra exactly as `kdrun train <overrides>` would compose it, the method
is built from the composed config as the pipeline builds it, and its total loss is compared with the
reference implementation's formula (re-derived in tests/test_loss_oracles.py) on float64 tensors.
The same command must appear verbatim in docs/methods.md, so the table cannot drift from what works.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_loss_oracles import (
    STUDENT,
    STUDENT_FEATURE,
    TARGETS,
    TEACHER,
    TEACHER_FEATURE,
    B,
    C,
    Student,
    Teacher,
    TwoHeads,
    attention_of,
    conv1x1,
    cross_entropy,
    kd,
    mdistiller_dkd,
)

from kdrun.config import config_dir, register_schema
from kdrun.data.batches import Batch
from kdrun.methods import METHODS, FrozenTeacher
from kdrun.training.from_config import plain

DOCS = Path(__file__).resolve().parent.parent / "docs" / "methods.md"
TAPS = ["method.student_layer=tap", "method.teacher_layer=tap"]  # the test's models; not part of the documented command


def s_leaf() -> torch.Tensor:
    return STUDENT.clone().requires_grad_(True)


def dkd_reference(epoch: int):
    """mdistiller: CE_WEIGHT * CE + min(epoch / WARMUP, 1) * (ALPHA * TCKD + BETA * NCKD), T^2 inside."""
    def loss(s, f):
        tckd, nckd = mdistiller_dkd(s, TEACHER, TARGETS, 4.0)
        return 1.0 * cross_entropy(s, TARGETS) + min(epoch / 20, 1.0) * (1.0 * tckd + 8.0 * nckd)
    return loss


def deit_soft(s, f):
    """Official DeiT, soft: (1 - a) CE(cls) + a * T^2 * KL_sum / (B * C), a = 0.5, tau = 1."""
    head = f.flatten(1)[:, :C]
    return 0.5 * cross_entropy(s, TARGETS) + 0.5 * kd(head, TEACHER, 1.0) / C


ROWS = {  # reference -> (documented kdrun overrides, reference total loss of (student logits, student feature))
    "torchdistill KDLoss(alpha=0.3, temperature=4)": (
        ["method=weighted", "T=4", "alpha=0.7"], lambda s, f: 0.3 * cross_entropy(s, TARGETS) + 0.7 * kd(s, TEACHER, 4.0)),
    "mdistiller KD / RepDistiller -r 0.1 -a 0.9": (
        ["method=weighted", "T=4", "method.weights={ce:0.1,kd:0.9}"],
        lambda s, f: 0.1 * cross_entropy(s, TARGETS) + 0.9 * kd(s, TEACHER, 4.0)),
    "Hinton et al. (both terms weight 1)": (
        ["method=basic", "T=4"], lambda s, f: cross_entropy(s, TARGETS) + kd(s, TEACHER, 4.0)),
    "mdistiller DKD": (
        ["method=dkd", "T=4", "method.weights={ce:1,tckd:1,nckd:8}", "method.warmup_epochs=20"], dkd_reference),
    "DeiT soft (official code)": (
        ["student=deit_tiny", "method=deit", "alpha=0.5", "T=1", "method.reduction=mean"], deit_soft),
    "DeiT hard (official code)": (
        ["student=deit_tiny", "method=deit", "method.distillation=hard", "alpha=0.5"],
        lambda s, f: 0.5 * cross_entropy(s, TARGETS) + 0.5 * cross_entropy(f.flatten(1)[:, :C], TEACHER.argmax(1))),
    "mdistiller AT / RepDistiller -r 1 -a 0 -b 1000": (
        ["method=attention", "method.weights={ce:1,attention:1}"],
        lambda s, f: cross_entropy(s, TARGETS) + 1000.0 * ((attention_of(f) - attention_of(TEACHER_FEATURE)) ** 2).mean()),
}
FITNETS = ["method=fitnets", "method.weights={ce:1,hint:100}"]  # mdistiller / RepDistiller FitNet weights (adapter differs)


def shell(overrides: list[str]) -> str:
    """The command as typed in a shell (dict overrides quoted), as the docs show it."""
    return "kdrun train " + " ".join(f"'{item}'" if "{" in item else item for item in overrides)


def composed_method(overrides: list[str], student: torch.nn.Module, extra: list[str] = ()):
    register_schema()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, *extra])
    options = plain(cfg.method)
    torch.manual_seed(0)
    teacher = FrozenTeacher(Teacher(TEACHER, TEACHER_FEATURE))
    method = METHODS.build(options.pop("name"), teacher, cfg.T, cfg.alpha, **options)
    method.prepare(student, torch.zeros(2, 1))
    return method.double()


def total_and_grads(method, student) -> tuple[float, torch.Tensor, torch.Tensor]:
    _, terms = method(student, Batch(torch.zeros(B, 1), TARGETS, torch.arange(B)))
    loss = sum(terms.values())
    loss.backward()
    return loss.item(), student.logits.grad, student.feature.grad


@pytest.mark.parametrize("reference", ROWS)
def test_documented_override_reproduces_the_reference_loss(reference):
    overrides, formula = ROWS[reference]
    assert shell(overrides) in DOCS.read_text(), f"docs/methods.md should show: {shell(overrides)}"
    is_deit = "student=deit_tiny" in overrides
    student = (TwoHeads if is_deit else Student)(STUDENT, STUDENT_FEATURE)
    method = composed_method(overrides, student, TAPS if "method=attention" in overrides else [])
    for epoch in (1, 10, 20, 240) if "method=dkd" in overrides else (1,):
        method.begin_epoch(epoch, 240)
        student.zero_grad()
        loss, logits_grad, feature_grad = total_and_grads(method, student)
        s, f = s_leaf(), STUDENT_FEATURE.clone().requires_grad_(True)
        expected = (formula(epoch) if formula is dkd_reference else formula)(s, f)
        expected.backward()
        assert loss == pytest.approx(expected.item(), rel=1e-10), (reference, epoch)
        assert torch.allclose(logits_grad, s.grad, rtol=1e-9, atol=1e-13)
        if f.grad is not None:
            assert torch.allclose(feature_grad, f.grad, rtol=1e-9, atol=1e-13)


def test_documented_fitnets_weights_give_ce_plus_100_mse():
    assert shell(FITNETS) in DOCS.read_text()
    student = Student(STUDENT, STUDENT_FEATURE)
    method = composed_method(FITNETS, student, TAPS)
    loss, _, _ = total_and_grads(method, student)
    expected = cross_entropy(STUDENT, TARGETS) + 100.0 * ((conv1x1(STUDENT_FEATURE, method.adapter) - TEACHER_FEATURE) ** 2).mean()
    assert loss == pytest.approx(expected.item(), rel=1e-10)

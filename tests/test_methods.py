"""Golden values for the distillation losses, computed by hand / with plain-Python math."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdrun.data.batches import Batch
from kdrun.methods import METHODS, CrossEntropy, FrozenTeacher
from kdrun.methods.losses import soft_target_kl


def python_kl(teacher_logits: list[float], student_logits: list[float], temperature: float) -> float:
    """KL(softmax(t/T) || softmax(s/T)) with the standard library only (an independent formula)."""

    def softmax(values: list[float]) -> list[float]:
        exps = [math.exp(v / temperature) for v in values]
        return [e / sum(exps) for e in exps]

    p, q = softmax(teacher_logits), softmax(student_logits)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


class Flip(nn.Module):
    """A 'teacher' whose logits are the input reversed: student [1,2,3] -> teacher [3,2,1]."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.flip(dims=[1])


STUDENT = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])  # row 2: teacher == student -> KL 0
TARGETS = torch.tensor([2, 0])
BATCH = Batch(STUDENT, TARGETS, torch.arange(2))


def test_kl_hand_worked_value_T1():
    # log p_t - log p_s = [2, 0, -2] for row 1, so KL = 2 * (p_t[0] - p_t[2]) = 1.15042; row 2 is 0.
    kl = soft_target_kl(STUDENT, STUDENT.flip(dims=[1]), 1.0)
    assert kl.item() == pytest.approx(1.150424 / 2, abs=1e-5)  # batchmean: divided by 2 rows, not by 6 elements


def test_kl_matches_independent_formula_at_T2():
    kl = soft_target_kl(STUDENT, STUDENT.flip(dims=[1]), 2.0)
    expected = (python_kl([3, 2, 1], [1, 2, 3], 2.0) + 0.0) / 2
    assert kl.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.320159 / 2, abs=1e-5)  # hand value: 1.0 * (p0 - p2) at T=2


def test_basic_is_ce_plus_T2_kl():
    method = METHODS.build("basic", FrozenTeacher(Flip()), 2.0, 0.3)
    _, terms = method(nn.Identity(), BATCH)
    ce = (-math.log(math.exp(3) / (math.exp(1) + math.exp(2) + math.exp(3))) + math.log(3)) / 2
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["kd"].item() == pytest.approx(4 * python_kl([3, 2, 1], [1, 2, 3], 2.0) / 2, rel=1e-6)


def test_weighted_weights_terms_and_T2():
    method = METHODS.build("weighted", FrozenTeacher(Flip()), 2.0, 0.25)
    _, terms = method(nn.Identity(), BATCH)
    ce = (0.407606 + math.log(3)) / 2  # CE of [1,2,3] at class 2 = 0.407606; uniform row = log 3
    assert terms["ce"].item() == pytest.approx(0.75 * ce, abs=1e-5)
    assert terms["kd"].item() == pytest.approx(0.25 * 4 * 0.320159 / 2, abs=1e-5)


def test_weighted_without_T2_scaling():
    method = METHODS.build("weighted", FrozenTeacher(Flip()), 2.0, 0.5, scale_by_T2=False)
    _, terms = method(nn.Identity(), BATCH)
    assert terms["kd"].item() == pytest.approx(0.5 * 0.320159 / 2, abs=1e-5)


def test_cross_entropy_objective_has_single_term():
    _, terms = CrossEntropy()(nn.Identity(), BATCH)
    assert list(terms) == ["ce"]


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_returns_finite_named_terms_and_grads_reach_student_only(name):
    torch.manual_seed(0)
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    method = METHODS.build(name, FrozenTeacher(teacher), 3.0, 0.5)
    batch = Batch(torch.randn(8, 4), torch.randint(0, 3, (8,)), torch.arange(8))
    _, terms = method(student, batch)
    assert terms and all(torch.isfinite(value) for value in terms.values())
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in teacher_before.items())
    assert not any(p is q for p in method.parameters() for q in teacher.parameters())

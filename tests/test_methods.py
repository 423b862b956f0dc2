"""Golden values for the distillation losses, computed by hand / with plain-Python math."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdrun.data.batches import Batch
from kdrun.errors import ConfigError
from kdrun.methods import METHODS, CrossEntropy, FrozenTeacher
from kdrun.methods.dkd import decoupled_kl
from kdrun.methods.losses import soft_target_kl
from kdrun.methods.schedules import build_schedule
from kdrun.models import build_model
from kdrun.models.vit import HeadLogits


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


# An ASYMMETRIC pair: p_t = [3/4, 1/4] against p_s = [1/2, 1/2]. KL(p_t || p_s) = 0.130812 but
# KL(p_s || p_t) = 0.143841, so a reversed KL fails here (the flipped pair above is symmetric).
ASYMMETRIC_TEACHER = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
ASYMMETRIC_STUDENT = torch.zeros(2, 2)  # row 2: teacher == student -> KL 0


def test_kl_hand_worked_value_T1_asymmetric():
    # 0.75 ln(0.75 / 0.5) + 0.25 ln(0.25 / 0.5) = 0.304099 - 0.173287
    kl = soft_target_kl(ASYMMETRIC_STUDENT, ASYMMETRIC_TEACHER, 1.0)
    assert kl.item() == pytest.approx(0.130812 / 2, abs=1e-6)  # batchmean: divided by 2 rows, not by 4 elements
    reverse = soft_target_kl(ASYMMETRIC_TEACHER, ASYMMETRIC_STUDENT, 1.0)
    assert reverse.item() == pytest.approx(0.143841 / 2, abs=1e-6)


def test_kl_matches_independent_formula_at_T2():
    teacher = 2 * ASYMMETRIC_TEACHER  # at T=2: logits [ln 3, 0] again, the same p_t
    kl = soft_target_kl(ASYMMETRIC_STUDENT, teacher, 2.0)
    expected = (python_kl(teacher[0].tolist(), [0.0, 0.0], 2.0) + 0.0) / 2
    assert kl.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.130812 / 2, abs=1e-6)
    kl_flip = soft_target_kl(STUDENT, STUDENT.flip(dims=[1]), 2.0)  # the symmetric pair, for the tests below
    assert kl_flip.item() == pytest.approx(0.320159 / 2, abs=1e-5)  # hand value: 1.0 * (p0 - p2) at T=2


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


# -- every registered method: finite named terms, gradients to the student and adapters only --------
CONV = {"student_layer": "features.4", "teacher_layer": "features.4"}
SETUPS = {  # name -> (teacher builder, student builder, method options)
    "basic": ("mlp", "mlp", {}), "weighted": ("mlp", "mlp", {}), "hard": ("mlp", "mlp", {}), "dkd": ("mlp", "mlp", {}),
    "fitnets": ("mlp", "mlp", {"student_layer": "2", "teacher_layer": "5"}),  # ReLUs: 1st of the student, 2nd of the teacher
    "cosine_hidden": ("mlp", "mlp", {"student_layer": "2", "teacher_layer": "5"}),
    "attention": ("tiny_cnn", "tiny_cnn", CONV), "activation_kl": ("tiny_cnn", "tiny_cnn", CONV),
    "adaptive_T": ("tiny_cnn", "tiny_cnn", CONV), "deit": ("tiny_cnn", "deit_tiny", {}),
}


def test_every_registered_method_has_a_test_setup():
    assert sorted(SETUPS) == METHODS.names()


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_returns_finite_named_terms_and_grads_reach_student_only(name):
    torch.manual_seed(0)
    teacher_name, student_name, options = SETUPS[name]
    teacher = build_model(teacher_name, (1, 8, 8), 3, **({"hidden": [6, 5]} if teacher_name == "mlp" else {}))
    student = build_model(student_name, (1, 8, 8), 3, **({"hidden": [4, 4]} if student_name == "mlp" else {}))
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    method = METHODS.build(name, FrozenTeacher(teacher), 3.0, 0.5, **options)
    method.prepare(student, torch.zeros(2, 1, 8, 8))
    batch = Batch(torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,)), torch.arange(8))
    logits, terms = method(student, batch)
    assert logits.shape == (8, 3)
    assert terms and all(torch.isfinite(value) for value in terms.values())
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is not None for p in method.parameters())  # adapters learn with the student
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in teacher_before.items())
    assert not any(p is q for p in method.parameters() for q in teacher.parameters())


# -- weights and schedules ---------------------------------------------------------------------------
def test_weights_override_alpha_defaults_R4_form():
    method = METHODS.build("weighted", FrozenTeacher(Flip()), 2.0, 0.5, scale_by_T2=False, weights={"ce": 0.3, "kd": 0.7})
    _, terms = method(nn.Identity(), BATCH)
    ce = (0.407606 + math.log(3)) / 2
    assert terms["ce"].item() == pytest.approx(0.3 * ce, abs=1e-5)
    assert terms["kd"].item() == pytest.approx(0.7 * 0.320159 / 2, abs=1e-5)


def test_unknown_weight_name_lists_terms():
    with pytest.raises(ConfigError, match="no term 'hint'") as caught:
        METHODS.build("weighted", FrozenTeacher(Flip()), 2.0, 0.5, weights={"hint": 1.0})
    assert "ce, kd" in caught.value.hint


def test_linear_and_cosine_schedules_golden():
    linear = build_schedule({"name": "linear", "T_min": 1, "decay": 0.07})
    assert [linear(4.0, step, 100) for step in (0, 10, 42, 43, 99)] == pytest.approx([4.0, 3.3, 1.06, 1.0, 1.0])
    cosine = build_schedule({"name": "cosine", "T_min": 1})
    assert [cosine(5.0, step, 5) for step in (0, 2, 4)] == pytest.approx([5.0, 3.0, 1.0])  # half-way: the middle
    assert build_schedule(None)(4.0, 50, 100) == 4.0


def test_schedule_applies_through_begin_step_and_changes_the_loss():
    method = METHODS.build("basic", FrozenTeacher(Flip()), 2.0, 0.5, schedule={"name": "linear", "T_min": 1, "decay": 0.5})
    method.begin_step(2, 10)
    assert method.temperature == 1.0
    _, terms = method(nn.Identity(), BATCH)
    assert terms["kd"].item() == pytest.approx(1.150424 / 2, abs=1e-5)  # the T=1 hand value


def test_unknown_schedule_lists_choices():
    with pytest.raises(ConfigError, match="unknown temperature schedule 'step'"):
        build_schedule({"name": "step"})


# -- hard and dkd --------------------------------------------------------------------------------------
def test_hard_is_ce_on_teacher_argmax():
    method = METHODS.build("hard", FrozenTeacher(Flip()), 9.0, 0.25)
    _, terms = method(nn.Identity(), BATCH)
    # teacher argmax: row 1 [3,2,1] -> class 0, row 2 uniform -> class 0 (first max)
    ce_teacher = (-math.log(math.exp(1) / (math.exp(1) + math.exp(2) + math.exp(3))) + math.log(3)) / 2
    assert terms["kd"].item() == pytest.approx(0.25 * ce_teacher, rel=1e-6)


def python_dkd(student: list[float], teacher: list[float], target: int, temperature: float) -> tuple[float, float]:
    """TCKD and NCKD for one sample, from the paper's definitions with the standard library only."""

    def softmax(values):
        exps = [math.exp(v / temperature) for v in values]
        return [e / sum(exps) for e in exps]

    p_s, p_t = softmax(student), softmax(teacher)
    b_s, b_t = [p_s[target], 1 - p_s[target]], [p_t[target], 1 - p_t[target]]
    tckd = sum(t * math.log(t / s) for t, s in zip(b_t, b_s))
    rest = [i for i in range(len(student)) if i != target]
    q_s = [p_s[i] / (1 - p_s[target]) for i in rest]
    q_t = [p_t[i] / (1 - p_t[target]) for i in rest]
    return tckd, sum(t * math.log(t / s) for t, s in zip(q_t, q_s))


def test_dkd_terms_match_paper_definitions():
    student, teacher = [1.0, 2.0, 0.5, -1.0], [3.0, 0.0, 1.0, 2.0]
    expected = python_dkd(student, teacher, 2, 2.0)
    tckd, nckd = decoupled_kl(torch.tensor([student], dtype=torch.float64), torch.tensor([teacher], dtype=torch.float64),
                              torch.tensor([2]), 2.0)
    assert (tckd.item(), nckd.item()) == pytest.approx(expected, rel=1e-12)
    # float32, as kdrun trains: log-space rounding of O(1) logits is ~1e-7 absolute (TCKD here is 0.0046)
    tckd, nckd = decoupled_kl(torch.tensor([student]), torch.tensor([teacher]), torch.tensor([2]), 2.0)
    assert (tckd.item(), nckd.item()) == pytest.approx(expected, abs=2e-7)
    method = METHODS.build("dkd", FrozenTeacher(nn.Identity()), 2.0, 0.5, dkd_alpha=1.0, beta=8.0)
    _, terms = method(_Constant(torch.tensor([student])), Batch(torch.tensor([teacher]), torch.tensor([2]), torch.arange(1)))
    assert terms["tckd"].item() == pytest.approx(0.5 * 1.0 * 4 * expected[0], abs=1e-6)
    assert terms["nckd"].item() == pytest.approx(0.5 * 8.0 * 4 * expected[1], rel=1e-5)


def test_dkd_decomposition_identity_KD_equals_TCKD_plus_one_minus_pt_times_NCKD():
    """Paper eq. (4), per sample: KL = TCKD + (1 - p_t[target]) * NCKD. With alpha=beta=1 DKD's sum
    TCKD + NCKD therefore exceeds classical KD by p_t[target] * NCKD (equal only if p_t[target] = 0)."""
    torch.manual_seed(0)
    student, teacher, targets = torch.randn(6, 5), 3 * torch.randn(6, 5), torch.randint(0, 5, (6,))
    tckd, nckd = decoupled_kl(student, teacher, targets, 3.0)
    p_target = torch.softmax(teacher / 3.0, dim=1).gather(1, targets[:, None])[:, 0]
    for row in range(6):
        kd = soft_target_kl(student[row : row + 1], teacher[row : row + 1], 3.0)
        assert (tckd[row] + (1 - p_target[row]) * nckd[row]).item() == pytest.approx(kd.item(), rel=1e-5)
        assert (tckd[row] + nckd[row] - kd).item() == pytest.approx((p_target[row] * nckd[row]).item(), abs=1e-6)


class _Constant(nn.Module):
    """A 'student' that outputs fixed logits and still has a parameter (so grads can flow)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.logits + 0 * inputs.sum()


# -- deit -----------------------------------------------------------------------------------------------
class _TwoHeads(nn.Module):
    def forward_heads(self, inputs: torch.Tensor) -> HeadLogits:
        return HeadLogits(inputs, inputs.flip(dims=[1]))


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_deit_ce_on_class_head_distillation_on_dist_head(mode):
    # teacher = identity: teacher logits = inputs; class head = inputs, dist head = inputs reversed
    method = METHODS.build("deit", FrozenTeacher(nn.Identity()), 2.0, 0.5, distillation=mode)
    logits, terms = method(_TwoHeads(), BATCH)
    ce = (0.407606 + math.log(3)) / 2
    assert terms["ce"].item() == pytest.approx(0.5 * ce, abs=1e-5)
    if mode == "soft":  # KL(softmax([1,2,3]/2) || softmax([3,2,1]/2)): same value as the flipped pair
        assert terms["kd"].item() == pytest.approx(0.5 * 4 * 0.320159 / 2, abs=1e-5)
    else:  # teacher argmax = [2, 0]; dist head row 1 = [3,2,1] -> CE at class 2 = 2.407606
        assert terms["kd"].item() == pytest.approx(0.5 * (2.407606 + math.log(3)) / 2, abs=1e-5)
    assert torch.allclose(logits, (STUDENT + STUDENT.flip(dims=[1])) / 2)


def test_deit_rejects_a_student_without_distillation_token():
    method = METHODS.build("deit", FrozenTeacher(nn.Identity()), 2.0, 0.5)
    with pytest.raises(ConfigError, match="needs a student with a distillation token"):
        method.prepare(build_model("vit_tiny", (1, 8, 8), 3), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ConfigError, match="distillation='medium'"):
        METHODS.build("deit", FrozenTeacher(nn.Identity()), 2.0, 0.5, distillation="medium")


def test_deit_tiny_forward_is_the_average_of_both_heads():
    torch.manual_seed(0)
    model = build_model("deit_tiny", (1, 28, 28), 10).eval()
    inputs = torch.randn(3, 1, 28, 28)
    heads = model.forward_heads(inputs)
    assert not torch.allclose(heads.cls, heads.distillation)
    assert torch.allclose(model(inputs), (heads.cls + heads.distillation) / 2, atol=1e-6)
    assert model.patch_embedding.kernel_size == (7, 7)  # auto patch: 28 -> 4x4 grid
    assert build_model("deit_tiny", (3, 32, 32), 10, patch_size=4).patch_embedding.kernel_size == (4, 4)
    with pytest.raises(ConfigError, match="patch_size=3 does not divide"):
        build_model("deit_tiny", (1, 8, 8), 10, patch_size=3)

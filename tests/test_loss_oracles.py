"""Every registered method against an independent float64 formula: each weighted term AND the gradient.

The formulas here are written from the papers / reference code (mdistiller, RepDistiller, the DeiT
code), read and re-derived, never imported: probabilities are exp / sum, KL is sum p (log p - log q),
no log_softmax, kl_div or logsumexp, so a wrong convention in kdrun's code (KL direction, T^2,
reduction, which term alpha weighs) cannot be shared by the oracle. The fixtures are asymmetric
(KL(p||q) != KL(q||p) by far), random and in float64; gradients are w.r.t. the student's logits
and features, where the loss is applied.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdrun.data.batches import Batch
from kdrun.methods import METHODS, FrozenTeacher
from kdrun.models.vit import HeadLogits

F64 = torch.float64
B, C, T, ALPHA = 5, 7, 2.5, 0.3
GENERATOR = torch.Generator().manual_seed(18)
STUDENT = 3 * torch.randn(B, C, generator=GENERATOR, dtype=F64)
TEACHER = 3 * torch.randn(B, C, generator=GENERATOR, dtype=F64)
TARGETS = torch.randint(0, C, (B,), generator=GENERATOR)
STUDENT_FEATURE = torch.randn(B, 4, 4, 4, generator=GENERATOR, dtype=F64)  # (N, C, H, W)
TEACHER_FEATURE = torch.randn(B, 6, 4, 4, generator=GENERATOR, dtype=F64).abs() + 0.1


# -- the independent formulas ----------------------------------------------------------------------
def probs(logits: torch.Tensor, temperature: float, dim: int = 1) -> torch.Tensor:
    scaled = (logits - logits.amax(dim=dim, keepdim=True).detach()) / temperature
    return scaled.exp() / scaled.exp().sum(dim=dim, keepdim=True)


def kl_rows(p: torch.Tensor, q: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """KL(p || q) per row: sum p log(p / q)."""
    return (p * (p.log() - q.log())).sum(dim=dim)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return -probs(logits, 1.0)[torch.arange(len(labels)), labels].log().mean()


def kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's soft term: T^2 * KL(p_t^T || p_s^T), batch mean."""
    return temperature**2 * kl_rows(probs(teacher, temperature), probs(student, temperature)).mean()


def mdistiller_dkd(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float):
    """(TCKD, NCKD) with T^2, batch mean, as mdistiller's dkd_loss defines them (re-derived)."""
    target = nn.functional.one_hot(labels, student.shape[1]).bool()
    p_s, p_t = probs(student, temperature), probs(teacher, temperature)
    binary = [torch.stack([(p * target).sum(1), (p * ~target).sum(1)], dim=1) for p in (p_s, p_t)]
    tckd = kl_rows(binary[1], binary[0])
    rest_s, rest_t = [torch.where(target, 1.0, p) / (p * ~target).sum(1, keepdim=True) for p in (p_s, p_t)]
    nckd = (torch.where(target, 0.0, rest_t * (rest_t.log() - rest_s.log()))).sum(1)
    return temperature**2 * tckd.mean(), temperature**2 * nckd.mean()


def conv1x1(feature: torch.Tensor, adapter: nn.Module) -> torch.Tensor:
    weight, bias = adapter.map.weight.detach()[:, :, 0, 0], adapter.map.bias.detach()
    return torch.einsum("oc,nchw->nohw", weight, feature) + bias[None, :, None, None]


def attention_of(feature: torch.Tensor) -> torch.Tensor:
    """RepDistiller / the AT authors' map: mean_c f^2, flattened, divided by its L2 norm."""
    energy = (feature**2).mean(dim=1).flatten(1)
    return energy / (energy**2).sum(dim=1, keepdim=True).sqrt()


def block_mean(feature: torch.Tensor, size: int) -> torch.Tensor:
    """Average over non-overlapping blocks down to size x size (adaptive pooling at an integer ratio)."""
    n, c, h, w = feature.shape
    return feature.reshape(n, c, size, h // size, size, w // size).mean(dim=(3, 5))


def channel_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL over channels at every (sample, position), averaged over them."""
    return kl_rows(probs(teacher, temperature), probs(student, temperature)).mean()


# -- kdrun's side: the method's forward on float64 tensors --------------------------------------------
class Student(nn.Module):
    """Logits and a 4D feature as leaves; the feature passes layer "tap", logits do not depend on it."""

    def __init__(self, logits: torch.Tensor, feature: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.feature = nn.Parameter(logits.clone()), nn.Parameter(feature.clone())
        self.tap = nn.Identity()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.tap(self.feature)
        return self.logits


class TwoHeads(Student):
    def forward_heads(self, inputs: torch.Tensor) -> HeadLogits:
        return HeadLogits(self.logits, self.feature.flatten(1)[:, :C])  # the distillation head: a second leaf


class Teacher(nn.Module):
    def __init__(self, logits: torch.Tensor, feature: torch.Tensor) -> None:
        super().__init__()
        self.fixed_logits, self.fixed_feature, self.tap = logits, feature, nn.Identity()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.tap(self.fixed_feature)
        return self.fixed_logits


TAPS = {"student_layer": "tap", "teacher_layer": "tap"}


def kdrun_terms(name: str, options: dict, student: nn.Module, teacher_feature: torch.Tensor = TEACHER_FEATURE):
    """(method, weighted terms) of `name` on the fixtures, adapters in float64 with their seeded initial weights."""
    torch.manual_seed(0)
    method = METHODS.build(name, FrozenTeacher(Teacher(TEACHER, teacher_feature)), T, ALPHA, **options)
    method.prepare(student, torch.zeros(2, 1))
    method.double()
    _, terms = method(student, Batch(torch.zeros(B, 1), TARGETS, torch.arange(B)))
    return method, terms


def reference_terms(name: str, options: dict, method: nn.Module, s: torch.Tensor, f: torch.Tensor) -> dict:
    """The weighted terms from the independent formulas; s = student logits, f = student feature (leaves)."""
    ce = cross_entropy(s, TARGETS)
    adapter = getattr(method, "adapter", None)
    if name == "basic":
        return {"ce": ce, "kd": kd(s, TEACHER, T)}
    if name in ("weighted", "hard"):
        teacher_term = kd(s, TEACHER, T) if name == "weighted" else cross_entropy(s, TEACHER.argmax(1))
        return {"ce": (1 - ALPHA) * ce, "kd": ALPHA * teacher_term}
    if name == "dkd":
        tckd, nckd = mdistiller_dkd(s, TEACHER, TARGETS, T)
        return {"ce": (1 - ALPHA) * ce, "tckd": ALPHA * 1.0 * tckd, "nckd": ALPHA * 8.0 * nckd}
    if name == "deit":
        head = f.flatten(1)[:, :C]
        soft = kd(head, TEACHER, T) / (C if options.get("reduction") == "mean" else 1)
        teacher_term = soft if options.get("distillation", "soft") == "soft" else cross_entropy(head, TEACHER.argmax(1))
        return {"ce": (1 - ALPHA) * ce, "kd": ALPHA * teacher_term}
    if name == "fitnets":
        return {"ce": (1 - ALPHA) * ce, "hint": ALPHA * ((conv1x1(f, adapter) - TEACHER_FEATURE) ** 2).mean()}
    if name == "cosine_hidden":
        a, b = conv1x1(f, adapter).flatten(1), TEACHER_FEATURE.flatten(1)
        cosine = (a * b).sum(1) / ((a * a).sum(1).sqrt() * (b * b).sum(1).sqrt())
        return {"ce": (1 - ALPHA) * ce, "cosine": ALPHA * (1 - cosine).mean()}
    if name == "attention":
        difference = attention_of(f) - attention_of(TEACHER_FEATURE)
        return {"ce": (1 - ALPHA) * ce, "attention": ALPHA * 1000.0 * (difference**2).mean()}
    adapted = conv1x1(f, adapter).permute(0, 2, 3, 1).reshape(-1, 6)  # rows = (sample, position), over channels
    teacher_rows = TEACHER_FEATURE.permute(0, 2, 3, 1).reshape(-1, 6)
    temperature = T
    if name == "adaptive_T":  # R1: T = clamp(scale * ||a_t - a_s||_2 / numel, T_min, T_max), no gradient through T
        distance = float(((teacher_rows - adapted.detach()) ** 2).sum().sqrt()) / TEACHER_FEATURE.numel()
        temperature = min(10.0, max(1.0, options["scale"] * distance))
        assert 1.0 < temperature < 10.0  # not clamped: the distance really sets it
    return {"ce": (1 - ALPHA) * ce, "activation": ALPHA * temperature**2 * channel_kl(adapted, teacher_rows, temperature)}


CASES = {  # name -> the method's options (beyond the layer taps of feature methods)
    "basic": {}, "weighted": {}, "hard": {}, "dkd": {}, "deit": {}, "fitnets": TAPS, "cosine_hidden": TAPS,
    "attention": TAPS, "activation_kl": TAPS, "adaptive_T": {**TAPS, "scale": 50.0},
}
VARIANTS = [(name, options) for name, options in CASES.items()] + [
    ("deit", {"distillation": "hard"}), ("deit", {"reduction": "mean"}),
]


def test_every_registered_method_has_an_oracle():
    assert sorted(CASES) == METHODS.names()


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in VARIANTS])
def test_terms_and_gradients_match_the_independent_formula(name, options):
    student = (TwoHeads if name == "deit" else Student)(STUDENT, STUDENT_FEATURE)
    method, terms = kdrun_terms(name, options, student)
    s, f = STUDENT.clone().requires_grad_(True), STUDENT_FEATURE.clone().requires_grad_(True)
    expected = reference_terms(name, options, method, s, f)
    assert set(terms) == set(expected)
    for term, value in expected.items():
        assert terms[term].item() == pytest.approx(value.item(), rel=1e-10), term
    sum(terms.values()).backward()
    sum(expected.values()).backward()
    for kdrun_leaf, reference_leaf in ((student.logits, s), (student.feature, f)):
        assert torch.allclose(grad_of(kdrun_leaf), grad_of(reference_leaf), rtol=1e-9, atol=1e-13)


def grad_of(leaf: torch.Tensor) -> torch.Tensor:
    """The leaf's gradient; zeros when the loss does not depend on it (logit methods and the feature)."""
    return leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)


def test_the_fixture_tells_kl_directions_apart():
    """Reversing the KL must move the value by far more than the tolerance (the old golden pair did not)."""
    forward, backward = (kl_rows(probs(a, T), probs(b, T)).mean() for a, b in ((TEACHER, STUDENT), (STUDENT, TEACHER)))
    assert abs(forward - backward) > 0.05 * forward  # 8.5% here; the tests' tolerance is 1e-10


# -- closed-form gradients: T^2 and the reductions show up as exact factors ----------------------------
def test_soft_target_gradient_is_T_times_probability_difference_over_batch():
    """d/ds [T^2 KL(p_t^T || p_s^T)]_batchmean = T (p_s^T - p_t^T) / B: without T^2 it would be 1/T^2 of this."""
    student = Student(STUDENT, STUDENT_FEATURE)
    _, terms = kdrun_terms("basic", {}, student)
    terms["kd"].backward()
    assert torch.allclose(student.logits.grad, T * (probs(STUDENT, T) - probs(TEACHER, T)) / B, rtol=1e-10, atol=1e-14)


def test_cross_entropy_gradient_is_probability_minus_one_hot_over_batch():
    student = Student(STUDENT, STUDENT_FEATURE)
    _, terms = kdrun_terms("weighted", {}, student)
    terms["ce"].backward()
    expected = (1 - ALPHA) * (probs(STUDENT, 1.0) - nn.functional.one_hot(TARGETS, C)) / B
    assert torch.allclose(student.logits.grad, expected, rtol=1e-10, atol=1e-14)


def test_activation_kl_gradient_is_T_times_channel_probability_difference_over_rows():
    """Per (sample, position) row over channels, d/da_s = alpha T (softmax(a_s/T) - softmax(a_t/T)) / rows."""
    torch.manual_seed(0)
    method = METHODS.build("activation_kl", FrozenTeacher(Teacher(TEACHER, TEACHER_FEATURE)), T, ALPHA, **TAPS)
    method.prepare(Student(STUDENT, STUDENT_FEATURE), torch.zeros(2, 1))
    adapted = torch.randn(B, 6, 4, 4, generator=GENERATOR, dtype=F64, requires_grad=True)
    method.adapter = nn.Identity()  # the loss as a function of the adapted feature itself
    (ALPHA * method.feature_loss(adapted, TEACHER_FEATURE)).backward()
    rows = B * 4 * 4
    expected = ALPHA * T * (probs(adapted.detach(), T) - probs(TEACHER_FEATURE, T)) / rows  # dim 1 = channels
    assert torch.allclose(adapted.grad, expected, rtol=1e-10, atol=1e-14)


# -- attention between maps of different sizes: the larger is average-pooled (RepDistiller, mdistiller) ---
@pytest.mark.parametrize("student_size", [8, 2])  # student larger, student smaller than the teacher's 4x4
def test_attention_pools_the_larger_map_down_to_the_smaller(student_size):
    feature = torch.randn(B, 4, student_size, student_size, generator=GENERATOR, dtype=F64)
    student = Student(STUDENT, feature)
    method, terms = kdrun_terms("attention", TAPS, student)
    f = feature.clone().requires_grad_(True)
    size = min(student_size, 4)
    student_map = attention_of(block_mean(f, size) if student_size > size else f)
    teacher_map = attention_of(block_mean(TEACHER_FEATURE, size) if size < 4 else TEACHER_FEATURE)
    expected = ALPHA * 1000.0 * ((student_map - teacher_map) ** 2).mean()
    assert terms["attention"].item() == pytest.approx(expected.item(), rel=1e-10)
    terms["attention"].backward()
    expected.backward()
    assert torch.allclose(student.feature.grad, f.grad, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("student_size", [8, 6])
def test_attention_bilinear_option_resizes_the_student_instead(student_size):
    feature = torch.randn(B, 4, student_size, student_size, generator=GENERATOR, dtype=F64)
    pooled = kdrun_terms("attention", TAPS, Student(STUDENT, feature))[1]["attention"]
    bilinear = kdrun_terms("attention", {**TAPS, "resize": "bilinear"}, Student(STUDENT, feature))[1]["attention"]
    resized = nn.functional.interpolate(feature, size=(4, 4), mode="bilinear", align_corners=False)
    expected = ALPHA * 1000.0 * ((attention_of(resized) - attention_of(TEACHER_FEATURE)) ** 2).mean()
    assert bilinear.item() == pytest.approx(expected.item(), rel=1e-10)
    if student_size == 8:  # exactly 2x: bilinear resizing averages 2x2 blocks, the two conventions agree
        assert bilinear.item() == pytest.approx(pooled.item(), rel=1e-10)
    else:
        assert abs(bilinear.item() - pooled.item()) > 1e-3 * pooled.item()

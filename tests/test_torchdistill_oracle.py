"""Differential tests: kdrun's losses against torchdistill's (a test dependency), same tensors, same numbers.

torchdistill's conventions differ from kdrun's in naming only, and each test states the mapping:
its KDLoss `alpha` weighs the CE term and `beta` (default 1 - alpha) the T^2 * KL term, so kdrun's
`weighted` with alpha=a is KDLoss(alpha=1 - a, beta=a). Values and gradients (w.r.t. the student's
logits or features) are compared in float32, the precision kdrun trains in, and in float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchdistill.losses.mid_level import ATLoss, KDLoss, SimpleLossWrapper

from kdrun.data.batches import Batch
from kdrun.methods import METHODS, FrozenTeacher
from kdrun.models.vit import HeadLogits

B, C, T = 16, 10, 4.0
DTYPES = [torch.float32, torch.float64]


def logits_pair(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    student = 2 * torch.randn(B, C, generator=generator, dtype=dtype)
    teacher = 4 * torch.randn(B, C, generator=generator, dtype=dtype)
    return student, teacher, torch.randint(0, C, (B,), generator=generator)


class Leaf(nn.Module):
    """A 'student' whose logits are a leaf parameter (both heads the same, for deit)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.logits

    def forward_heads(self, inputs: torch.Tensor) -> HeadLogits:
        return HeadLogits(self.logits, self.logits)


class Fixed(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.fixed = logits

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.fixed


def kdrun_loss_and_grad(name: str, alpha: float, dtype: torch.dtype, **options) -> tuple[float, torch.Tensor]:
    student, teacher, targets = logits_pair(dtype)
    model = Leaf(student)
    method = METHODS.build(name, FrozenTeacher(Fixed(teacher)), T, alpha, **options)
    _, terms = method(model, Batch(torch.zeros(B, 1, dtype=dtype), targets, torch.arange(B)))
    loss = sum(terms.values())
    loss.backward()
    return loss.item(), model.logits.grad


def torchdistill_loss_and_grad(dtype: torch.dtype, **kd_options) -> tuple[float, torch.Tensor]:
    student, teacher, targets = logits_pair(dtype)
    student.requires_grad_(True)
    criterion = KDLoss("fc", "output", "fc", "output", temperature=T, **kd_options)
    loss = criterion({"fc": {"output": student}}, {"fc": {"output": teacher}}, targets)
    loss.backward()
    return loss.item(), student.grad


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")  # KLDivLoss('mean') is DeiT's choice here
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "alpha", "options", "kd_options"), [
    ("weighted", 0.7, {}, {"alpha": 0.3, "beta": 0.7}),                 # kdrun alpha weighs KD, torchdistill's weighs CE
    ("weighted", 0.1, {}, {"alpha": 0.9}),                              # beta defaults to 1 - alpha there
    ("basic", 0.5, {}, {"alpha": 1.0, "beta": 1.0}),                    # Hinton's unweighted sum
    ("deit", 0.5, {"reduction": "mean"}, {"alpha": 0.5, "beta": 0.5, "reduction": "mean"}),  # official DeiT: / (B x C)
])
def test_logit_losses_agree_with_torchdistill_kdloss(name, alpha, options, kd_options, dtype):
    ours, our_grad = kdrun_loss_and_grad(name, alpha, dtype, **options)
    theirs, their_grad = torchdistill_loss_and_grad(dtype, **kd_options)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    assert ours == pytest.approx(theirs, rel=tolerance)
    assert torch.allclose(our_grad, their_grad, rtol=tolerance * 10, atol=tolerance * their_grad.abs().max().item())


def feature_pair(dtype: torch.dtype, student_channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    student = torch.randn(B, student_channels, 5, 5, generator=generator, dtype=dtype)
    teacher = torch.randn(B, 6, 5, 5, generator=generator, dtype=dtype).relu()
    return student, teacher


def feature_method(name: str, dtype: torch.dtype, student_channels: int, **options) -> nn.Module:
    """The method's feature loss with its adapter built for (B, student_channels, 5, 5) -> (B, 6, 5, 5)."""
    teacher = nn.Sequential(nn.Conv2d(1, 6, 1), nn.Flatten(), nn.Linear(6 * 25, C))
    student = nn.Sequential(nn.Conv2d(1, student_channels, 1), nn.Flatten(), nn.Linear(student_channels * 25, C))
    torch.manual_seed(0)
    method = METHODS.build(name, FrozenTeacher(teacher), T, 0.5, student_layer="0", teacher_layer="0", **options)
    method.prepare(student, torch.zeros(2, 1, 5, 5))
    return method.to(dtype)


def assert_same_loss_and_gradient(ours: torch.Tensor, our_leaf: torch.Tensor, theirs: torch.Tensor, their_leaf: torch.Tensor) -> None:
    ours.backward()
    theirs.backward()
    tolerance = 1e-5 if ours.dtype == torch.float32 else 1e-12
    assert ours.item() == pytest.approx(theirs.item(), rel=tolerance)
    assert torch.allclose(our_leaf.grad, their_leaf.grad, rtol=tolerance * 10, atol=tolerance * their_leaf.grad.abs().max().item())


def feature_losses(name: str, dtype: torch.dtype, theirs, **options) -> None:
    """kdrun's feature loss and `theirs(method, student leaf, teacher feature)` on the same features."""
    method = feature_method(name, dtype, 3, **options)
    student, teacher = feature_pair(dtype)
    our_leaf, their_leaf = student.clone().requires_grad_(True), student.clone().requires_grad_(True)
    assert_same_loss_and_gradient(method.feature_loss(our_leaf, teacher), our_leaf, theirs(method, their_leaf, teacher), their_leaf)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_agrees_with_torchdistill_atloss_code_mode(dtype):
    """torchdistill's ATLoss(mode='code') is the AT authors' at_loss; kdrun's attention term is beta times it."""
    pairs = {"pair": {"student": {"io": "output", "path": "s"}, "teacher": {"io": "output", "path": "t"}, "weight": 1000.0}}
    criterion = ATLoss(pairs, mode="code")
    feature_losses("attention", dtype, lambda method, student, teacher: criterion({"s": {"output": student}}, {"t": {"output": teacher}}),
                   beta=1000.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fitnets_agrees_with_torchdistill_mse_hint_on_the_regressor_output(dtype):
    """torchdistill's FitNets: SimpleLossWrapper(MSELoss) from the student's regressor output to the teacher's hint layer."""
    wrapper = SimpleLossWrapper(nn.MSELoss(), input={"is_from_teacher": False, "module_path": "regressor", "io": "output"},
                                target={"is_from_teacher": True, "module_path": "hint", "io": "output"})
    feature_losses("fitnets", dtype, lambda method, student, teacher: wrapper(
        {"regressor": {"output": method.adapter(student)}}, {"hint": {"output": teacher}}, None))

"""The stacked path's two shortcuts past vmap: the hand-batched MLP forward and the K-member losses.

Both are checked against what they replace: the member-aware losses against K separate single-model
calls (values and gradients), the MLP forward against the vmap + functional_call forward (logits,
gradients and dropout masks, same seed), and the methods that declare `stacks_members` against the
launcher's list of methods it stacks.
"""

from __future__ import annotations

import torch
from torch import nn

from kdrun.data.batches import Batch
from kdrun.methods import METHODS, FrozenTeacher
from kdrun.methods.losses import cross_entropy, soft_target_kl
from kdrun.models import build_model
from kdrun.training.speed import use_fast_dropout
from kdrun.training.stacked.grouping import STACKED_METHODS
from kdrun.training.stacked.sequential import batched_forward
from kdrun.training.stacked.students import StackedStudents

GENERATOR = torch.Generator().manual_seed(0)
MEMBERS, BATCH, CLASSES = 3, 5, 4
STUDENT_LOGITS = torch.randn(MEMBERS, BATCH, CLASSES, generator=GENERATOR, dtype=torch.float64) * 3
TEACHER_LOGITS = torch.randn(BATCH, CLASSES, generator=GENERATOR, dtype=torch.float64) * 3
TARGETS = torch.tensor([0, 3, 1, 1, 2])
TEMPERATURES = torch.tensor([1.0, 2.5, 7.0], dtype=torch.float64)


def per_member(loss, *arguments):
    """(K,) values and the gradient wrt the stacked logits, member by member with single-model calls."""
    logits = STUDENT_LOGITS.clone().requires_grad_(True)
    values = torch.stack([loss(logits[k], *(argument[k] if isinstance(argument, list) else argument for argument in arguments))
                          for k in range(MEMBERS)])
    values.sum().backward()
    return values.detach(), logits.grad


def stacked(loss, *arguments):
    logits = STUDENT_LOGITS.clone().requires_grad_(True)
    values = loss(logits, *arguments)
    values.sum().backward()
    return values.detach(), logits.grad


def test_member_cross_entropy_is_each_members_own_mean_over_its_batch():
    expected, expected_grad = per_member(cross_entropy, TARGETS)
    values, grad = stacked(cross_entropy, TARGETS)
    assert values.shape == (MEMBERS,)
    torch.testing.assert_close(values, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=0)


def test_member_soft_target_kl_uses_each_members_temperature():
    expected, expected_grad = per_member(soft_target_kl, TEACHER_LOGITS, [float(t) for t in TEMPERATURES])
    values, grad = stacked(soft_target_kl, TEACHER_LOGITS, TEMPERATURES)
    torch.testing.assert_close(values, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=0)
    assert len(set(values.tolist())) == MEMBERS  # the temperatures matter: one T for all would fail above


def test_every_method_the_launcher_stacks_computes_its_members_at_once_and_only_those():
    declared = sorted(name for name in METHODS.names() if getattr(METHODS.get(name), "stacks_members", False))
    assert declared == sorted(STACKED_METHODS)


def test_stacked_method_terms_equal_each_members_solo_terms():
    """weighted / basic / hard with (K,) temperature and weights: the terms of K solo calls."""
    teacher = FrozenTeacher(nn.Linear(CLASSES, CLASSES))
    teacher.cached_logits = TEACHER_LOGITS.float()
    batch = Batch(torch.zeros(BATCH, CLASSES), TARGETS, torch.arange(BATCH))
    alphas = [0.1, 0.5, 0.9]
    for name in STACKED_METHODS:
        solos = [METHODS.build(name, teacher, float(TEMPERATURES[k]), alphas[k]) for k in range(MEMBERS)]
        expected = [solo(lambda inputs, k=k: STUDENT_LOGITS[k].float(), batch).terms for k, solo in enumerate(solos)]
        template = solos[0]
        template.temperature = TEMPERATURES.float()
        template.weights = {term: torch.tensor([solo.weights[term] for solo in solos]) for term in template.weights}
        terms = template(lambda inputs: STUDENT_LOGITS.float(), batch).terms
        for term, values in terms.items():
            torch.testing.assert_close(values, torch.stack([solo_terms[term] for solo_terms in expected]), rtol=1e-5, atol=1e-7)


def mlp_students(dropout: float, fast: bool) -> list[nn.Module]:
    models = []
    for seed in range(MEMBERS):
        torch.manual_seed(seed)
        model = build_model("mlp", (1, 6, 6), 10, hidden=[7, 5], dropout=dropout)
        if fast:
            use_fast_dropout(model)
        models.append(model)
    return models


def forward_and_gradients(stack: StackedStudents, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    for parameter in stack.parameters():
        parameter.grad = None
    torch.manual_seed(123)  # the dropout masks come from the global generator, as in a solo run
    logits = stack.logits(inputs)
    (logits * torch.linspace(-1, 1, logits.numel()).view_as(logits)).sum().backward()
    return logits.detach(), [parameter.grad.clone() for parameter in stack.parameters()]


def test_hand_batched_mlp_forward_equals_the_vmap_forward_with_the_same_masks():
    inputs = torch.randn(8, 1, 6, 6, generator=GENERATOR)
    for dropout, fast in ((0.0, False), (0.5, False), (0.5, True)):
        stack = StackedStudents(mlp_students(dropout, fast))
        assert stack.batched is not None
        stack.train(True)
        logits, grads = forward_and_gradients(stack, inputs)
        stack.batched = None  # the general path: vmap over functional_call
        vmap_logits, vmap_grads = forward_and_gradients(stack, inputs)
        torch.testing.assert_close(logits, vmap_logits, rtol=0, atol=1e-6)
        for grad, vmap_grad in zip(grads, vmap_grads):
            torch.testing.assert_close(grad, vmap_grad, rtol=0, atol=1e-6)


def test_only_plain_mlps_take_the_hand_batched_forward():
    class Custom(nn.Sequential):
        def forward(self, inputs):
            return super().forward(inputs) * 2

    assert batched_forward(build_model("mlp", (1, 6, 6), 10, hidden=[4])) is not None
    assert batched_forward(build_model("tiny_cnn", (1, 8, 8), 10)) is None
    assert batched_forward(Custom(nn.Flatten(), nn.Linear(36, 10))) is None  # its own forward: vmap path
    assert batched_forward(nn.Sequential(nn.Flatten(), nn.Linear(36, 10), nn.Tanh(), nn.Linear(10, 2))) is None
    assert batched_forward(nn.Sequential(nn.Flatten(0), nn.Linear(36, 10))) is None

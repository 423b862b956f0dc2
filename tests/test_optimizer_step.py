"""FastStep: the direct fused Adam call must be bit-identical to optimizer.step(), and fall back whenever it could differ."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn

from kdrun.training.loop import _epoch_totals
from kdrun.training.speed import adam
from kdrun.training.speed.adam import FastStep


def model_and_batches(seed: int = 0) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    batches = [(torch.randn(4, 6), torch.randint(0, 3, (4,))) for _ in range(6)]
    return model, batches


def train(model: nn.Module, batches, optimizer: torch.optim.Optimizer, use_fast_step: bool, scheduler=None) -> None:
    fast = FastStep(optimizer)
    for inputs, targets in batches:
        loss = nn.functional.cross_entropy(model(inputs), targets)
        if use_fast_step:
            fast.clear_gradients()
            loss.backward()
            fast.step()
        else:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()


def assert_same_training(make_optimizer, with_scheduler: bool = False) -> torch.optim.Optimizer:
    """Train two copies, one with optimizer.step() and one with FastStep; everything must match bit for bit."""
    reference_model, batches = model_and_batches()
    fast_model = copy.deepcopy(reference_model)
    optimizers = make_optimizer(reference_model.parameters()), make_optimizer(fast_model.parameters())
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) if with_scheduler else None for o in optimizers]
    train(reference_model, batches, optimizers[0], False, schedulers[0])
    train(fast_model, batches, optimizers[1], True, schedulers[1])
    for expected, actual in zip(reference_model.parameters(), fast_model.parameters()):
        assert torch.equal(expected, actual)
    for expected, actual in zip(optimizers[0].state.values(), optimizers[1].state.values()):
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[key], actual[key]) for key in expected)
    return optimizers[1]


def count_official_steps(optimizer: torch.optim.Optimizer) -> list[int]:
    """Wraps optimizer.step to count the calls that go through torch's own step."""
    calls = [0]
    official = optimizer.step

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return official(*args, **kwargs)

    optimizer.step = types.MethodType(counted, optimizer)  # a bound method, as LR schedulers expect to wrap
    return calls


@pytest.mark.parametrize("optimizer_class, options", [
    (torch.optim.Adam, {}),
    (torch.optim.Adam, {"weight_decay": 0.1, "betas": (0.8, 0.99), "eps": 1e-6}),
    (torch.optim.Adam, {"maximize": True}),
    (torch.optim.AdamW, {"weight_decay": 0.1}),
    (torch.optim.Adam, {"decoupled_weight_decay": True, "weight_decay": 0.05}),
])
def test_direct_fused_step_is_bit_identical_and_taken_after_the_first_step(optimizer_class, options):
    made = []

    def make(parameters):
        optimizer = optimizer_class(parameters, lr=0.01, fused=True, **options)
        made.append((optimizer, count_official_steps(optimizer)))
        return optimizer

    assert_same_training(make, with_scheduler=True)
    _, fast_calls = made[1]
    assert fast_calls[0] == 1  # only the first step (which creates the state) went through torch's step


@pytest.mark.parametrize("make", [
    lambda parameters: torch.optim.Adam(parameters, lr=0.01, fused=True, amsgrad=True),
    lambda parameters: torch.optim.Adam(parameters, lr=0.01),  # for-loop / foreach implementation
    lambda parameters: torch.optim.SGD(parameters, lr=0.1, momentum=0.9),
    lambda parameters: torch.optim.Adam(parameters, lr=torch.tensor(0.01), fused=True),
])
def test_other_optimizers_and_settings_go_through_torchs_own_step(make):
    made = []

    def counting(parameters):
        optimizer = make(parameters)
        made.append(count_official_steps(optimizer))
        return optimizer

    assert_same_training(counting)
    assert made[1][0] == 6  # every step


def test_a_parameter_without_gradient_and_step_hooks_fall_back_to_torchs_step():
    model, batches = model_and_batches()
    unused = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([*model.parameters(), unused], lr=0.01, fused=True)
    official = count_official_steps(optimizer)
    train(model, batches, optimizer, True)
    assert official[0] == 6 and torch.equal(unused, torch.ones(3))  # Adam skips it, as torch does

    model, batches = model_and_batches()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
    hook_calls = []
    optimizer.register_step_post_hook(lambda *args: hook_calls.append(1))
    train(model, batches, optimizer, True)
    assert len(hook_calls) == 6


def test_the_direct_call_is_made_only_on_verified_torch_versions(monkeypatch):
    """torch._fused_adam_ is private: on an unverified torch FastStep is torch's own step, every time."""
    assert adam.torch_minor("2.14.1+cu128") == (2, 14) and adam.torch_minor("2.9.0a0") == (2, 9)
    assert adam.direct_call_verified("2.14.0") and not adam.direct_call_verified("2.15.0")
    assert not adam.direct_call_verified("2.13.1")
    assert adam.DIRECT_CALL == adam.direct_call_verified(torch.__version__)
    monkeypatch.setattr(adam, "DIRECT_CALL", False)
    made = []

    def make(parameters):
        optimizer = torch.optim.Adam(parameters, lr=0.01, fused=True)
        made.append(count_official_steps(optimizer))
        return optimizer

    assert_same_training(make)
    assert made[1][0] == 6  # the fallback: every step through optimizer.step()


def test_epoch_totals_weigh_each_term_by_its_batch_size_even_when_a_term_skips_steps():
    steps = [{"ce": torch.tensor(1.0), "kd": torch.tensor(2.0)}, {"ce": torch.tensor(3.0)}, {"ce": torch.tensor(0.5), "kd": torch.tensor(4.0)}]
    sizes = [4, 4, 2]
    hits = [torch.tensor([True, False, True, True]), torch.tensor([False] * 4), torch.tensor([True, True])]
    sums, correct = _epoch_totals(steps, sizes, hits, torch.device("cpu"))
    assert sums["ce"].item() == pytest.approx(1.0 * 4 + 3.0 * 4 + 0.5 * 2)
    assert sums["kd"].item() == pytest.approx(2.0 * 4 + 4.0 * 2)
    assert correct.item() == 5
    no_sums, no_correct = _epoch_totals([], [], [], torch.device("cpu"))
    assert no_sums == {} and no_correct.item() == 0

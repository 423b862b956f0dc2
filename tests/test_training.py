"""The training loop: determinism, model selection on validation, frozen teacher."""

from __future__ import annotations

import functools

import torch

from kdrun.data import DATASETS, make_splits
from kdrun.data.batches import InMemoryBatches
from kdrun.methods import METHODS, CrossEntropy, FrozenTeacher
from kdrun.models import build_model
from kdrun.results import PhaseSummary, gap_recovered
from kdrun.training.loop import PhaseSettings, train_phase
from kdrun.training.run_files import Observers

CPU = torch.device("cpu")


def digits():
    return make_splits(DATASETS.build("digits", 0), 0.1, 300, seed=0)


def batches(data, split, shuffle=False):
    return InMemoryBatches(getattr(data, split), data.mean, data.std, 32 if shuffle else 512, CPU, shuffle, seed=0)


def train(data, model, objective, epochs=3):
    settings = PhaseSettings(epochs, functools.partial(torch.optim.Adam, lr=1e-3))
    return train_phase(
        "test", model, objective, batches(data, "train", True), batches(data, "val"), batches(data, "test"),
        settings, Observers([]),
    )


def test_same_seed_gives_identical_results():
    data = digits()
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("mlp", data.input_shape, 10, hidden=[32], dropout=0.5)
        results.append(train(data, model, CrossEntropy()))
    assert [r.to_dict() | {"seconds": 0, "samples_per_s": 0} for r in results[0].history] == [
        r.to_dict() | {"seconds": 0, "samples_per_s": 0} for r in results[1].history
    ]
    assert results[0].test_acc == results[1].test_acc


def test_best_epoch_is_the_best_validation_epoch():
    data = digits()
    torch.manual_seed(0)
    result = train(data, build_model("mlp", data.input_shape, 10, hidden=[16]), CrossEntropy(), epochs=5)
    val = [record.val_acc for record in result.history]
    assert result.best_val_acc == max(val) and result.best_epoch == val.index(max(val)) + 1


def test_distillation_leaves_teacher_frozen_and_unchanged():
    data = digits()
    torch.manual_seed(0)
    teacher = build_model("mlp", data.input_shape, 10, hidden=[64])
    train(data, teacher, CrossEntropy(), epochs=1)
    before = {name: tensor.clone() for name, tensor in teacher.state_dict().items()}
    student = build_model("mlp", data.input_shape, 10, hidden=[8])
    method = METHODS.build("weighted", FrozenTeacher(teacher), 4.0, 0.5)
    result = train(data, student, method, epochs=2)
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[name], tensor) for name, tensor in teacher.state_dict().items())
    assert set(result.history[0].loss) == {"ce", "kd"} and result.history[0].T == 4.0


def test_gap_recovered():
    def row(test_acc: float) -> PhaseSummary:
        return PhaseSummary("trained", test_acc, test_acc, 1, test_acc, 10, 0.1)

    phases = {"teacher": row(0.9), "independent": row(0.7), "distilled": row(0.8)}
    assert abs(gap_recovered(phases) - 0.5) < 1e-12
    assert gap_recovered({**phases, "teacher": row(0.7)}) is None  # no gap to recover
    assert gap_recovered({"teacher": row(0.9), "distilled": row(0.8)}) is None  # no independent baseline


def test_the_loop_announces_every_epoch_to_the_objective():
    """Epoch-wise warm-ups (DKD) rely on begin_epoch(epoch, epochs), 1-based, before the epoch's steps."""
    calls = []

    class Recording(CrossEntropy):
        def begin_epoch(self, epoch: int, epochs: int) -> None:
            calls.append((epoch, epochs, self.steps))

        def begin_step(self, step: int, total_steps: int) -> None:
            self.steps = step + 1

    data = digits()
    objective = Recording()
    objective.steps = 0
    steps = len(batches(data, "train", True))
    train(data, build_model("mlp", data.input_shape, 10, hidden=[8]), objective, epochs=3)
    assert calls == [(1, 3, 0), (2, 3, steps), (3, 3, 2 * steps)]

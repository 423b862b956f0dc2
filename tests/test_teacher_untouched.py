"""The teacher is sacred: through a whole distillation phase of the real loop, nothing changes it.

The teacher here has BatchNorm AND dropout inside the tapped block, the case in which a teacher layer
held by the objective (registered as its child) would be switched to train mode by `objective.train()`
(dropout fires, BatchNorm running statistics drift) and handed to the optimizer.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from conftest import read_summary, run_kdrun
from kdrun.data import DATASETS, make_splits
from kdrun.data.batches import InMemoryBatches
from kdrun.methods import METHODS, CrossEntropy, FrozenTeacher
from kdrun.methods.base import TeacherLeak
from kdrun.methods.fitnets import FitNets
from kdrun.models import build_model, count_parameters
from kdrun.training.loop import PhaseSettings, train_phase
from kdrun.training.run_files import Observers

CPU = torch.device("cpu")
TAPPED = "block"  # conv -> BatchNorm -> ReLU -> Dropout


class BlockTeacher(nn.Module):
    """stem conv, then one block holding BatchNorm and dropout (the tap), then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(inputs)))


# feature methods tap the teacher's block; the student is the smallest model of the right kind
FEATURE_OPTIONS = {"student_layer": "features.4", "teacher_layer": TAPPED}
STUDENTS = {"deit": "deit_tiny"}
OPTIONS = {name: FEATURE_OPTIONS for name in ("fitnets", "cosine_hidden", "attention", "activation_kl", "adaptive_T")}


@functools.lru_cache(maxsize=1)
def digits():
    return make_splits(DATASETS.build("digits", 0), 0.1, 300, seed=0)


def batches(split: str, shuffle: bool = False) -> InMemoryBatches:
    data = digits()
    return InMemoryBatches(getattr(data, split), data.mean, data.std, 64 if shuffle else 512, CPU, shuffle, seed=0)


def run_phase(model: nn.Module, objective: nn.Module, epochs: int = 1):
    settings = PhaseSettings(epochs, functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-3))
    return train_phase("phase", model, objective, batches("train", True), batches("val"), batches("test"), settings, Observers([]))


@functools.lru_cache(maxsize=1)
def trained_teacher_state() -> dict[str, torch.Tensor]:
    """A teacher trained for one epoch (BatchNorm running statistics away from their initial 0 / 1)."""
    torch.manual_seed(0)
    teacher = BlockTeacher()
    run_phase(teacher, CrossEntropy())
    return {name: tensor.clone() for name, tensor in teacher.state_dict().items()}


def frozen_teacher() -> tuple[nn.Module, list[bool]]:
    """The trained teacher and a list that gets, at EVERY teacher forward, whether any module was in train mode."""
    teacher = BlockTeacher()
    teacher.load_state_dict(trained_teacher_state())
    modes: list[bool] = []
    teacher.register_forward_pre_hook(lambda module, _inputs: modes.append(any(m.training for m in module.modules())))
    return teacher, modes


@pytest.mark.parametrize("name", METHODS.names())
def test_a_distillation_phase_leaves_every_teacher_tensor_and_mode_untouched(name):
    teacher, modes = frozen_teacher()
    before = {key: value.clone() for key, value in teacher.state_dict().items()}
    assert before["block.1.running_mean"].abs().sum() > 0  # the statistics are trained ones, so drift would show
    torch.manual_seed(1)
    student = build_model(STUDENTS.get(name, "tiny_cnn"), (1, 8, 8), 10)
    method = METHODS.build(name, FrozenTeacher(teacher), 4.0, 0.5, **OPTIONS.get(name, {}))
    method.prepare(student, torch.zeros(2, 1, 8, 8))
    modes.clear()  # prepare's dry forward counts too, but the phase is what this test is about
    result = run_phase(student, method)
    assert len(modes) == len(batches("train", True))  # the teacher ran at every step (no cached logits here) ...
    assert not any(modes)  # ... and every time with all of its modules in eval mode (dropout off, BN frozen)
    assert not teacher.training
    after = teacher.state_dict()
    changed = [key for key, value in before.items() if not torch.equal(value, after[key])]
    assert not changed  # parameters AND buffers (running_mean/var, num_batches_tracked) bit-identical
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    adapter = getattr(method, "adapter", None)
    assert count_parameters(method) == (count_parameters(adapter) if adapter is not None else 0)  # extra = adapters only
    assert result.history[0].loss  # the phase really trained


def test_the_loop_refuses_an_objective_that_registers_a_teacher_layer():
    """The old bug, re-created on purpose: the guard stops it before the first step."""

    class LeakyFitNets(FitNets):
        def prepare(self, student: nn.Module, sample_inputs: torch.Tensor) -> None:
            super().prepare(student, sample_inputs)
            self.teacher_block = self.teacher.layer(self.teacher_path)  # a registered child: the leak

    teacher, modes = frozen_teacher()
    before = {key: value.clone() for key, value in teacher.state_dict().items()}
    method = LeakyFitNets(FrozenTeacher(teacher), 4.0, 0.5, **FEATURE_OPTIONS)
    method.prepare(build_model("tiny_cnn", (1, 8, 8), 10), torch.zeros(2, 1, 8, 8))
    modes.clear()
    with pytest.raises(TeacherLeak, match="objective submodule 'teacher_block' \\(Sequential\\) belongs to the teacher"):
        run_phase(build_model("tiny_cnn", (1, 8, 8), 10), method)
    assert not modes and all(torch.equal(value, teacher.state_dict()[key]) for key, value in before.items())


def test_the_loop_refuses_teacher_tensors_among_the_trainable_ones():
    teacher, _ = frozen_teacher()

    class BufferThief(FitNets):
        def prepare(self, student: nn.Module, sample_inputs: torch.Tensor) -> None:
            super().prepare(student, sample_inputs)
            self.register_buffer("stolen", self.teacher.model.block[1].running_mean)

    method = BufferThief(FrozenTeacher(teacher), 4.0, 0.5, **FEATURE_OPTIONS)
    method.prepare(build_model("tiny_cnn", (1, 8, 8), 10), torch.zeros(2, 1, 8, 8))
    with pytest.raises(TeacherLeak, match="objective buffer 'stolen' is the teacher's"):
        run_phase(build_model("tiny_cnn", (1, 8, 8), 10), method)
    with pytest.raises(TeacherLeak, match="a trainable tensor of shape \\(4, 1, 3, 3\\) is the teacher's"):
        run_phase(teacher, METHODS.build("weighted", FrozenTeacher(teacher), 4.0, 0.5))  # the student IS the teacher


def test_cli_extra_params_count_adapters_only_on_a_batchnorm_teacher(tmp_path):
    """Through the CLI: resnet20 teacher tapped at a residual block (BatchNorm inside, 4,672 parameters)."""
    result = run_kdrun(
        "train", "-m", "method=attention,fitnets", "teacher=resnet20", "student=tiny_cnn", "teacher_epochs=1",
        "student_epochs=1", "independent=false", "trainer.progress=false", "dataset.max_train_samples=160",
        "++method.teacher_layer=features.0", "++method.student_layer=features.4",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    extra = {summary["phases"]["distilled"]["method"]: summary["phases"]["distilled"]["extra_params"]
             for summary in map(read_summary, (path.parent for path in (tmp_path / "sweep").glob("*/summary.json")))}
    assert extra == {"attention": 0, "fitnets": 8 * 16 + 16}  # fitnets: a 1x1 conv from 8 (tiny_cnn width 4) to 16 channels

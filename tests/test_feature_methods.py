"""Feature-based methods: taps, adapters, golden losses, errors, and every method through the CLI."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import read_metrics, read_summary, run_kdrun
from kdrun.data.batches import Batch
from kdrun.errors import ConfigError
from kdrun.methods import METHODS, FrozenTeacher
from kdrun.methods.activation_kl import channel_kl
from kdrun.methods.attention import attention_map
from kdrun.methods.features import Projection
from kdrun.methods.taps import find_layer, forward_with_feature, tapped
from kdrun.models import build_model


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.factor * inputs


class Flip(nn.Module):
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.flip(dims=[1])


def identity_adapter(method) -> None:
    """Set a linear projection to the identity, so the loss is a plain function of the features."""
    with torch.no_grad():
        method.adapter.map.weight.copy_(torch.eye(method.adapter.map.weight.shape[0]))
        method.adapter.map.bias.zero_()


X = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
BATCH = Batch(X, torch.tensor([0, 1]), torch.arange(2))


# -- taps ----------------------------------------------------------------------------------------------
def test_unknown_layer_lists_similar_valid_names():
    model = build_model("tiny_cnn", (1, 8, 8), 10)
    with pytest.raises(ConfigError) as caught:
        find_layer(model, "feature.4", "student")
    assert "student layer 'feature.4' does not exist in TinyCNN" in caught.value.message
    assert "features.4" in caught.value.hint and "method.student_layer" in caught.value.hint
    assert "\n" not in caught.value.one_line()


def test_hook_is_removed_even_when_the_forward_fails():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(RuntimeError):
        with tapped(model[0]):
            assert len(model[0]._forward_hooks) == 1
            model(torch.zeros(1, 3))  # wrong width: the forward raises
    assert len(model[0]._forward_hooks) == 0


def test_tap_before_inplace_relu_keeps_the_pre_activation_values():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(inplace=True))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    _, feature = forward_with_feature(model, model[0], torch.tensor([[-1.0, 2.0]]))
    assert feature.tolist() == [[-1.0, 2.0]]


# -- adapters and golden losses ------------------------------------------------------------------------
def test_projection_shapes():
    spatial = Projection((4, 8, 8), (16, 4, 4))
    assert spatial.map.weight.shape == (16, 4, 1, 1)
    assert spatial(torch.randn(3, 4, 8, 8)).shape == (3, 16, 4, 4)
    flat = Projection((20,), (1200,))
    assert flat.map.weight.shape == (1200, 20)
    assert Projection((8, 2, 2), (5,))(torch.randn(3, 8, 2, 2)).shape == (3, 5)


def test_fitnets_is_mse_after_the_regressor():
    teacher = nn.Sequential(nn.Identity(), nn.Linear(2, 3))
    student = nn.Sequential(Scale(2.0), nn.Linear(2, 3))
    method = METHODS.build("fitnets", FrozenTeacher(teacher), 4.0, 0.25, student_layer="0", teacher_layer="0")
    method.prepare(student, torch.zeros(2, 2))
    identity_adapter(method)
    _, terms = method(student, BATCH)
    assert terms["hint"].item() == pytest.approx(0.25 * (1 + 0 + 1 + 1) / 4)  # mean((2x - x)^2) = mean(x^2)


def test_cosine_hidden_golden():
    teacher = nn.Sequential(nn.Identity(), nn.Linear(2, 3))
    student = nn.Sequential(Flip(), nn.Linear(2, 3))
    method = METHODS.build("cosine_hidden", FrozenTeacher(teacher), 4.0, 1.0, student_layer="0", teacher_layer="0")
    method.prepare(student, torch.zeros(2, 2))
    identity_adapter(method)
    _, terms = method(student, BATCH)
    # row 1: [0,1] vs [1,0] -> cos 0 -> 1; row 2: [1,1] vs [1,1] -> cos 1 -> 0; mean 0.5
    assert terms["cosine"].item() == pytest.approx(0.5, abs=1e-6)
    loss = nn.CosineEmbeddingLoss()(X.flip(dims=[1]), X, torch.ones(2))  # R5's form agrees
    assert loss.item() == pytest.approx(0.5, abs=1e-6)


def test_attention_map_on_a_known_tensor():
    feature = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # (1, 2 channels, 1, 2)
    # channel-mean of squares: [(1 + 9) / 2, (4 + 0) / 2] = [5, 2]; L2-normalised by sqrt(29)
    expected = [5 / math.sqrt(29), 2 / math.sqrt(29)]
    assert attention_map(feature)[0].tolist() == pytest.approx(expected)


def test_attention_loss_golden_and_channel_counts_may_differ():
    teacher = build_model("tiny_cnn", (1, 4, 4), 3, width=4)
    student = build_model("tiny_cnn", (1, 4, 4), 3, width=2)
    method = METHODS.build("attention", FrozenTeacher(teacher), 4.0, 0.5, student_layer="features.4", teacher_layer="features.4", beta=10.0)
    method.prepare(student, torch.zeros(2, 1, 4, 4))  # 2 student channels against 4: no adapter needed
    assert not list(method.parameters())
    student_feature, teacher_feature = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]]), torch.tensor([[[[1.0, 1.0]]]])
    q_s = [5 / math.sqrt(29), 2 / math.sqrt(29)]
    q_t = [1 / math.sqrt(2), 1 / math.sqrt(2)]
    expected = 10.0 * sum((a - b) ** 2 for a, b in zip(q_s, q_t)) / 2
    assert method.feature_loss(student_feature, teacher_feature).item() == pytest.approx(expected, rel=1e-6)


def python_channel_kl(student_rows, teacher_rows, temperature):
    def softmax(values):
        exps = [math.exp(v / temperature) for v in values]
        return [e / sum(exps) for e in exps]

    total = 0.0
    for s, t in zip(student_rows, teacher_rows):
        p, q = softmax(t), softmax(s)
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    return total / len(student_rows)


def test_channel_kl_is_per_position_over_channels_batchmean():
    student = torch.tensor([[[[1.0, 0.0]], [[2.0, 0.0]], [[0.0, 3.0]]]])  # (1, 3, 1, 2): 2 positions
    teacher = torch.tensor([[[[0.0, 1.0]], [[1.0, 1.0]], [[2.0, 0.0]]]])
    rows_student, rows_teacher = [[1, 2, 0], [0, 0, 3]], [[0, 1, 2], [1, 1, 0]]
    expected = python_channel_kl(rows_student, rows_teacher, 2.0)
    assert channel_kl(student, teacher, 2.0).item() == pytest.approx(expected, rel=1e-6)


def test_adaptive_temperature_from_normalised_distance_clamped():
    teacher = build_model("tiny_cnn", (1, 4, 4), 3)
    method = METHODS.build("adaptive_T", FrozenTeacher(teacher), 4.0, 0.5, student_layer="features.4",
                           teacher_layer="features.4", scale=4.0, T_min=1.0, T_max=10.0)
    zeros, ones = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)  # ||diff|| = 2, numel 4 -> 0.5
    method.update_temperature(ones, zeros)
    assert method.temperature == pytest.approx(2.0)
    method.scale = 100.0
    method.update_temperature(ones, zeros)
    assert method.temperature == 10.0
    method.scale = 0.1
    method.update_temperature(ones, zeros)
    assert method.temperature == 1.0


def test_activation_kl_runs_the_student_forward_once_per_step():
    torch.manual_seed(0)
    teacher, student = build_model("tiny_cnn", (1, 8, 8), 3, width=4), build_model("tiny_cnn", (1, 8, 8), 3, width=2)
    method = METHODS.build("activation_kl", FrozenTeacher(teacher), 2.0, 0.5, student_layer="features.4", teacher_layer="features.2")
    method.prepare(student, torch.zeros(2, 1, 8, 8))
    assert method.adapter.map.weight.shape == (4, 4, 1, 1)  # student 2*2 channels -> teacher 4 channels (after pool)
    calls = []
    student.register_forward_hook(lambda *_: calls.append(1))
    method(student, Batch(torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,)), torch.arange(4)))
    assert len(calls) == 1


# -- bad input ---------------------------------------------------------------------------------------
def test_spatial_method_on_flat_features_is_a_clear_error():
    teacher, student = build_model("mlp", (1, 8, 8), 3, hidden=[6]), build_model("mlp", (1, 8, 8), 3, hidden=[4])
    method = METHODS.build("attention", FrozenTeacher(teacher), 2.0, 0.5, student_layer="2", teacher_layer="2")
    with pytest.raises(ConfigError, match=r"needs 4D \(N, C, H, W\) features, but student layer '2' gives shape \(2, 4\)"):
        method.prepare(student, torch.zeros(2, 1, 8, 8))


def test_feature_method_without_layers_is_a_clear_error():
    with pytest.raises(ConfigError, match="needs method.student_layer"):
        METHODS.build("fitnets", FrozenTeacher(nn.Sequential(nn.Linear(2, 2))), 2.0, 0.5)


# -- every method through the CLI ------------------------------------------------------------------
TINY_RUN = ["teacher_epochs=1", "student_epochs=1", "trainer.progress=false", "dataset.max_train_samples=160", "independent=false"]
# one multirun (one process, one cached teacher) per model family keeps this fast
CLI_GROUPS = {
    "mlp": (["basic", "weighted", "hard", "dkd", "fitnets", "cosine_hidden"], ["method.schedule={name:linear,T_min:1,decay:1.0}"]),
    "cnn": (["attention", "activation_kl", "adaptive_T"], ["teacher=tiny_cnn", "student=tiny_cnn"]),
    "deit": (["deit"], ["student=deit_tiny", "method.distillation=hard", "method.weights={ce:0.3,kd:0.7}"]),
}
WITH_ADAPTERS = {"fitnets", "cosine_hidden", "activation_kl", "adaptive_T"}


def test_every_method_has_a_cli_run():
    assert sorted(name for names, _ in CLI_GROUPS.values() for name in names) == METHODS.names()


@pytest.mark.parametrize("group", CLI_GROUPS)
def test_every_method_trains_end_to_end(tmp_path, group):
    names, overrides = CLI_GROUPS[group]
    result = run_kdrun(
        "train", "-m", f"method={','.join(names)}", *overrides, *TINY_RUN,
        f"hydra.sweep.dir={tmp_path / 'sweep'}", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run_dirs = sorted(path.parent for path in (tmp_path / "sweep").glob("*/summary.json"))
    assert len(run_dirs) == len(names)
    for run_dir in run_dirs:
        distilled = read_summary(run_dir)["phases"]["distilled"]
        name = distilled["method"]
        assert (distilled["extra_params"] > 0) == (name in WITH_ADAPTERS)
        exported = load_file(run_dir / "distilled.safetensors")
        assert not any(key.startswith("adapter") for key in exported)  # adapters are not part of the student
        assert sum(tensor.numel() for tensor in exported.values()) == distilled["params"]
        rows = [row for row in read_metrics(run_dir) if row["phase"] == "distilled"]
        assert rows and all(math.isfinite(value) for value in rows[-1]["loss"].values())
        if group == "mlp":  # 5 steps with decay 1.0 from T=4: the schedule reached T_min, and the loop logged it
            assert rows[-1]["T"] == 1.0
        if name == "adaptive_T":
            assert 1.0 <= rows[-1]["T"] <= 10.0


def test_cli_unknown_layer_is_one_line_error(kdrun_in):
    result, run_dir = kdrun_in("method=fitnets", "method.student_layer=9", *TINY_RUN)
    assert result.returncode == 2
    assert "kdrun: error: student layer '9' does not exist in MLP" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_spatial_method_on_mlp_is_a_clear_error(kdrun_in):
    result, _ = kdrun_in("method=activation_kl", "method.student_layer=2", "method.teacher_layer=2", *TINY_RUN)
    assert result.returncode == 2
    assert "needs 4D (N, C, H, W) features" in result.stderr and "Traceback" not in result.stderr

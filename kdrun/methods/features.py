"""Shared machinery of feature-based methods: taps on named layers and shape-discovering adapters.

A feature method names one student layer and one teacher layer (`method.student_layer`,
`method.teacher_layer`). `prepare()` runs a dry forward through both models to learn the feature
shapes and builds the method's adapter (trained with the student, never exported with it).
The student's forward runs ONCE per step: logits and feature come from the same pass (R1's mistake).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional

from kdrun.data.batches import Batch
from kdrun.errors import ConfigError
from kdrun.methods.base import FrozenTeacher, StepOutput
from kdrun.methods.common import DistillationObjective
from kdrun.methods.taps import find_layer, forward_with_feature


class FeatureObjective(DistillationObjective):
    """(1 - alpha) * CE + alpha * <feature term>; subclasses define `feature_loss` and `build_adapter`."""

    feature_term = "feature"
    uses_cached_teacher_logits = False  # the teacher runs every step for its features anyway
    needs_4d = False

    def __init__(
        self, teacher: FrozenTeacher, temperature: float, alpha: float, student_layer: str | None = None, teacher_layer: str | None = None,
        weights: dict[str, float] | None = None, schedule: dict[str, Any] | str | None = None,
    ) -> None:
        defaults = {"ce": 1 - float(alpha), self.feature_term: float(alpha)}
        super().__init__(teacher, temperature, defaults, weights, schedule)
        for role, path in (("student", student_layer), ("teacher", teacher_layer)):
            if path is None or str(path) == "":
                raise ConfigError(f"method needs method.{role}_layer", "a module path from named_modules(), e.g. '2'")
        self.student_path, self.teacher_path = str(student_layer), str(teacher_layer)
        teacher.layer(self.teacher_path)  # an unknown path fails here; the layer stays with the teacher (never a child)
        self.adapter: nn.Module | None = None

    def prepare(self, student: nn.Module, sample_inputs: torch.Tensor) -> None:
        """Find the student's layer and build the adapter from the features' shapes (a dry forward)."""
        layer = find_layer(student, self.student_path, "student")
        _, teacher_feature = self.teacher_feature(sample_inputs)
        was_training = student.training
        student.eval()
        with torch.no_grad():
            _, student_feature = forward_with_feature(student, layer, sample_inputs)
        student.train(was_training)
        for role, feature in (("student", student_feature), ("teacher", teacher_feature)):
            if self.needs_4d and feature.dim() != 4:
                path = self.student_path if role == "student" else self.teacher_path
                raise ConfigError(
                    f"this method needs 4D (N, C, H, W) features, but {role} layer '{path}' gives shape "
                    f"{tuple(feature.shape)}",
                    "pick a convolutional layer (e.g. student=tiny_cnn) or a non-spatial method such as fitnets",
                )
        self.adapter = self.build_adapter(tuple(student_feature.shape[1:]), tuple(teacher_feature.shape[1:]))
        self.adapter.to(sample_inputs.device)

    def teacher_feature(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.teacher.logits_and_feature(inputs, self.teacher_path)

    def forward(self, model: nn.Module, batch: Batch) -> StepOutput:
        if self.adapter is None:
            raise RuntimeError("prepare(student, sample_inputs) must be called before training")  # a kdrun bug, not input
        _, teacher_feature = self.teacher_feature(batch.inputs)
        logits, student_feature = forward_with_feature(model, find_layer(model, self.student_path, "student"), batch.inputs)
        raw = {"ce": functional.cross_entropy(logits, batch.targets), self.feature_term: self.feature_loss(student_feature, teacher_feature)}
        return StepOutput(logits, self.weigh(raw))

    def build_adapter(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
        raise NotImplementedError

    def feature_loss(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.describe_weights()} (student '{self.student_path}' -> teacher '{self.teacher_path}', T={self.temperature:g})"


class Projection(nn.Module):
    """Maps a student feature to the teacher feature's shape.

    4D -> 4D: 1x1 convolution to the teacher's channels, then bilinear resize to its spatial size.
    Otherwise: flatten, linear to the teacher's element count, reshape.
    """

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.teacher_shape = teacher_shape
        self.spatial = len(student_shape) == 3 and len(teacher_shape) == 3
        if self.spatial:
            self.map = nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size=1)
        else:
            self.map = nn.Linear(_numel(student_shape), _numel(teacher_shape))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        if self.spatial:
            mapped = self.map(feature)
            if mapped.shape[2:] != torch.Size(self.teacher_shape[1:]):
                mapped = functional.interpolate(mapped, size=self.teacher_shape[1:], mode="bilinear", align_corners=False)
            return mapped
        return self.map(feature.flatten(1)).view(feature.shape[0], *self.teacher_shape)


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total

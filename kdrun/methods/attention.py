"""`attention`: attention transfer (Zagoruyko & Komodakis, ICLR 2017, activation-based AT).

    Q(A) = normalise_L2(flatten(mean_c A_c^2))            # spatial attention map, one per sample
    loss = (1 - alpha) * CE(s, y) + alpha * beta * mean((Q(student) - Q(teacher))^2)

As in the authors' code (`at_loss`), p = 2 and the squared difference is averaged over positions
and batch; `beta` (default 1000, the paper's value) restores the scale. Channel counts may differ;
if spatial sizes differ, the student's map is resized (bilinear) to the teacher's. Needs 4D features.
There is no adapter. `alpha` weighs `attention`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional

from kdrun.methods.base import FrozenTeacher
from kdrun.methods.features import FeatureObjective
from kdrun.methods.registry import METHODS


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W): channel-mean of squared activations, L2-normalised per sample."""
    return functional.normalize(feature.pow(2).mean(dim=1).flatten(1), dim=1)


@METHODS.register("attention")
class AttentionTransfer(FeatureObjective):
    feature_term = "attention"
    needs_4d = True

    def __init__(
        self, teacher: FrozenTeacher, temperature: float, alpha: float, student_layer: str | None = None,
        teacher_layer: str | None = None, beta: float = 1000.0,
        weights: dict[str, float] | None = None, schedule: dict[str, Any] | str | None = None,
    ) -> None:
        super().__init__(teacher, temperature, alpha, student_layer, teacher_layer, weights, schedule)
        self.beta = float(beta)

    def build_adapter(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
        return nn.Identity()  # attention maps need no learned adapter

    def feature_loss(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
        if student_feature.shape[2:] != teacher_feature.shape[2:]:
            student_feature = functional.interpolate(
                student_feature, size=teacher_feature.shape[2:], mode="bilinear", align_corners=False
            )
        return self.beta * (attention_map(student_feature) - attention_map(teacher_feature)).pow(2).mean()

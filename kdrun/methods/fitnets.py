"""`fitnets`: FitNets hints (Romero et al., ICLR 2015; recipe R5).

    loss = (1 - alpha) * CE(s, y) + alpha * MSE(regressor(student_feature), teacher_feature)

The regressor (1x1 conv + resize for 4D features, linear otherwise) maps the student's feature to
the teacher's shape; it is trained with the student and not exported. `alpha` weighs `hint`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from kdrun.methods.features import FeatureObjective, Projection
from kdrun.methods.registry import METHODS


@METHODS.register("fitnets")
class FitNets(FeatureObjective):
    feature_term = "hint"

    def build_adapter(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
        return Projection(student_shape, teacher_shape)

    def feature_loss(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
        return functional.mse_loss(self.adapter(student_feature), teacher_feature)

"""`cosine_hidden`: cosine loss between projected hidden representations (recipe R5).

    loss = (1 - alpha) * CE(s, y) + alpha * mean_batch(1 - cos(projection(student_feature), teacher_feature))

This equals `nn.CosineEmbeddingLoss` with target 1, as in R5. Features are compared flattened per
sample; the projection to the teacher's shape is trained with the student. `alpha` weighs `cosine`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from kdrun.methods.features import FeatureObjective, Projection
from kdrun.methods.registry import METHODS


@METHODS.register("cosine_hidden")
class CosineHidden(FeatureObjective):
    feature_term = "cosine"

    def build_adapter(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
        return Projection(student_shape, teacher_shape)

    def feature_loss(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
        projected = self.adapter(student_feature).flatten(1)
        return (1 - functional.cosine_similarity(projected, teacher_feature.flatten(1), dim=1)).mean()

"""`activation_kl`: recipe R1 method 3 ("activation"), done right.

    a_s = resize(conv1x1(student_feature))                  # to the teacher's channels and spatial size
    KL  = mean over (batch, positions) of KL(softmax_c(a_t / T) || softmax_c(a_s / T))
    loss = (1 - alpha) * CE(s, y) + alpha * T^2 * KL

Fixes R1's mistakes: the student side enters KL as LOG-probabilities, the reduction is batchmean
over (sample, position) rows rather than a mean over every element, a 1x1-conv adapter reconciles
channel counts and bilinear resizing the spatial sizes, and the student forward runs once per step.
Needs 4D features. `alpha` weighs `activation`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from kdrun.methods.features import FeatureObjective, Projection
from kdrun.methods.registry import METHODS


def channel_kl(student_feature: torch.Tensor, teacher_feature: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL over channels at every position, averaged over (sample, position); both (N, C, H, W)."""
    channels = teacher_feature.shape[1]
    student_rows = student_feature.permute(0, 2, 3, 1).reshape(-1, channels)  # (N*H*W, C)
    teacher_rows = teacher_feature.permute(0, 2, 3, 1).reshape(-1, channels)
    return functional.kl_div(
        functional.log_softmax(student_rows / temperature, dim=1),
        functional.log_softmax(teacher_rows / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )


@METHODS.register("activation_kl")
class ActivationKL(FeatureObjective):
    feature_term = "activation"
    needs_4d = True

    def build_adapter(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
        return Projection(student_shape, teacher_shape)

    def feature_loss(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
        adapted = self.adapter(student_feature)
        self.update_temperature(adapted, teacher_feature)
        return self.temperature**2 * channel_kl(adapted, teacher_feature, self.temperature)

    def update_temperature(self, adapted: torch.Tensor, teacher_feature: torch.Tensor) -> None:
        """Hook for adaptive_T; activation_kl keeps the (scheduled) temperature."""

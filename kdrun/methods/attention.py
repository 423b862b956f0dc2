"""`attention`: attention transfer (Zagoruyko & Komodakis, ICLR 2017, activation-based AT).

    Q(A) = normalise_L2(flatten(mean_c A_c^2))            # spatial attention map, one per sample
    loss = (1 - alpha) * CE(s, y) + alpha * beta * mean((Q(student) - Q(teacher))^2)

As in the authors' code (`at_loss`), p = 2 and the squared difference is averaged over positions
and batch; `beta` (default 1000, the paper's value) restores the scale. Channel counts may differ.
If spatial sizes differ, `resize: pool` (default) average-pools the LARGER feature down to the
smaller's size before the maps are formed, as RepDistiller and mdistiller do; `resize: bilinear`
resizes the student's feature to the teacher's size (kdrun's earlier behaviour; it agrees with
pooling only at exactly 2x). Needs 4D features. There is no adapter. `alpha` weighs `attention`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional

from kdrun.errors import ConfigError
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
        teacher_layer: str | None = None, beta: float = 1000.0, resize: str = "pool",
        weights: dict[str, float] | None = None, schedule: dict[str, Any] | str | None = None,
    ) -> None:
        if resize not in RESIZES:
            raise ConfigError(f"method.resize='{resize}' is unknown", f"choose one of: {', '.join(RESIZES)}")
        super().__init__(teacher, temperature, alpha, student_layer, teacher_layer, weights, schedule)
        self.beta = float(beta)
        self.resize = resize

    def build_adapter(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
        return nn.Identity()  # attention maps need no learned adapter

    def feature_loss(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
        student_feature, teacher_feature = RESIZES[self.resize](student_feature, teacher_feature)
        return self.beta * (attention_map(student_feature) - attention_map(teacher_feature)).pow(2).mean()


def pool_larger(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool whichever feature is larger to the other's spatial size (RepDistiller, mdistiller)."""
    size = tuple(min(a, b) for a, b in zip(student.shape[2:], teacher.shape[2:]))
    return tuple(f if f.shape[2:] == size else functional.adaptive_avg_pool2d(f, size) for f in (student, teacher))


def bilinear_student(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize the student's feature to the teacher's spatial size, bilinearly."""
    if student.shape[2:] != teacher.shape[2:]:
        student = functional.interpolate(student, size=teacher.shape[2:], mode="bilinear", align_corners=False)
    return student, teacher


RESIZES = {"pool": pool_larger, "bilinear": bilinear_student}

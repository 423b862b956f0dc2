"""`adaptive_T`: recipe R1 method 4 ("adaptive"): activation_kl with a per-step temperature.

    distance = ||a_t - a_s||_2 / numel(a_t)                 # R1's normalised L2 distance (no gradient)
    T_step   = clamp(scale * distance, T_min, T_max)
    loss     = (1 - alpha) * CE(s, y) + alpha * T_step^2 * KL_channels(a_t, a_s; T_step)

a_s is the adapted student feature (1x1 conv + resize), so the distance is defined even when the
raw features differ in shape. The temperature in effect is `self.temperature`, logged each epoch.
`scale` converts the tiny per-element distance into a temperature; a `schedule` is not used.
"""

from __future__ import annotations

from typing import Any

import torch

from kdrun.errors import ConfigError
from kdrun.methods.activation_kl import ActivationKL
from kdrun.methods.base import FrozenTeacher
from kdrun.methods.registry import METHODS


@METHODS.register("adaptive_T")
class AdaptiveTemperature(ActivationKL):
    def __init__(
        self, teacher: FrozenTeacher, temperature: float, alpha: float, student_layer: str | None = None,
        teacher_layer: str | None = None, scale: float = 1000.0, T_min: float = 1.0, T_max: float = 10.0,
        weights: dict[str, float] | None = None, schedule: dict[str, Any] | str | None = None,
    ) -> None:
        super().__init__(teacher, temperature, alpha, student_layer, teacher_layer, weights, schedule)
        if not 0 < T_min <= T_max:
            raise ConfigError(f"adaptive_T needs 0 < T_min <= T_max, got T_min={T_min}, T_max={T_max}", "e.g. T_min: 1, T_max: 10")
        if scale <= 0:
            raise ConfigError(f"adaptive_T scale={scale} must be > 0", "e.g. scale: 1000")
        self.scale, self.T_min, self.T_max = float(scale), float(T_min), float(T_max)

    def update_temperature(self, adapted: torch.Tensor, teacher_feature: torch.Tensor) -> None:
        """Set this step's temperature from how far the student's activations are from the teacher's."""
        with torch.no_grad():
            distance = (teacher_feature - adapted).norm() / teacher_feature.numel()
        self.temperature = min(self.T_max, max(self.T_min, self.scale * float(distance)))

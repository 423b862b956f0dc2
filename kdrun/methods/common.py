"""What distillation methods share: the teacher, a temperature (with its schedule) and term weights.

Every method computes RAW terms (e.g. `ce`, `kd`) and multiplies each by its weight. Default
weights come from `alpha` as each method documents (usually `ce: 1 - alpha`, distillation: alpha);
`method.weights: {ce: 0.3, kd: 0.7}` overrides them by name, which is how R4's loss is written.
"""

from __future__ import annotations

from typing import Any

import torch

from kdrun.errors import ConfigError
from kdrun.methods.base import FrozenTeacher, Objective
from kdrun.methods.schedules import build_schedule


class DistillationObjective(Objective):
    """An Objective with a frozen teacher, a scheduled temperature and named, weighted terms."""

    def __init__(
        self,
        teacher: FrozenTeacher,
        temperature: float,
        default_weights: dict[str, float],
        weights: dict[str, float] | None = None,
        schedule: dict[str, Any] | str | None = None,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.initial_temperature = float(temperature)
        self.temperature = float(temperature)
        self.schedule = build_schedule(schedule)
        self.weights = dict(default_weights)
        for name, weight in (weights or {}).items():
            if name not in default_weights:
                raise ConfigError(
                    f"method.weights has no term '{name}'", f"this method's terms: {', '.join(default_weights)}"
                )
            self.weights[name] = float(weight)

    def begin_step(self, step: int, total_steps: int) -> None:
        """Set the temperature for this step from the schedule (constant unless configured)."""
        self.temperature = float(self.schedule(self.initial_temperature, step, total_steps))

    def weigh(self, raw_terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Multiply each raw term by its weight; the result is what the loop sums and logs."""
        return {name: self.weights[name] * value for name, value in raw_terms.items()}

    def describe_weights(self) -> str:
        return " + ".join(f"{weight:g} * {name}" for name, weight in self.weights.items())

    def describe(self) -> str:
        return f"{self.describe_weights()} (T={self.temperature:g})"

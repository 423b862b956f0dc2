"""Distillation methods, one small file each, registered by name."""

from kdrun.methods import basic, weighted  # noqa: F401  (registration side effect)
from kdrun.methods.base import CrossEntropy, FrozenTeacher, Objective, StepOutput
from kdrun.methods.registry import METHODS

__all__ = ["METHODS", "CrossEntropy", "FrozenTeacher", "Objective", "StepOutput"]

"""Distillation methods, one small file each, registered by name."""

from kdrun.methods import (  # noqa: F401  (registration side effect)
    activation_kl,
    adaptive_T,
    attention,
    basic,
    cosine_hidden,
    deit,
    dkd,
    fitnets,
    hard,
    weighted,
)
from kdrun.methods.base import CrossEntropy, FrozenTeacher, Objective, StepOutput
from kdrun.methods.registry import METHODS

__all__ = ["METHODS", "CrossEntropy", "FrozenTeacher", "Objective", "StepOutput"]

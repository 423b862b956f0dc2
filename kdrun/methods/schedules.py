"""Temperature schedules, one registry for every method: `method.schedule: {name: linear, ...}`.

A schedule maps (initial temperature, step, total steps) to the temperature for that step. Methods
apply it in `begin_step`, so the loop logs the temperature in effect (R1's linear decay helper).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from kdrun.errors import ConfigError
from kdrun.registry import Registry

Schedule = Callable[[float, int, int], float]
SCHEDULES: Registry = Registry("temperature schedule")


@SCHEDULES.register("constant")
def constant() -> Schedule:
    """T stays at the root key `T` (the default)."""
    return lambda initial, step, total_steps: initial


@SCHEDULES.register("linear")
def linear(T_min: float = 1.0, decay: float = 0.07) -> Schedule:
    """R1: T = max(T_min, T0 - decay * step); soft targets early, sharper ones later."""
    _check_minimum(T_min)
    if decay < 0:
        raise ConfigError(f"linear schedule decay={decay} is negative", "use decay >= 0, e.g. 0.07")
    return lambda initial, step, total_steps: max(T_min, initial - decay * step)


@SCHEDULES.register("cosine")
def cosine(T_min: float = 1.0) -> Schedule:
    """T goes from T0 to T_min along half a cosine over the phase's steps."""
    _check_minimum(T_min)

    def temperature(initial: float, step: int, total_steps: int) -> float:
        progress = min(1.0, step / max(1, total_steps - 1))
        return T_min + (initial - T_min) * (1 + math.cos(math.pi * progress)) / 2

    return temperature


def _check_minimum(T_min: float) -> None:
    if T_min <= 0:
        raise ConfigError(f"schedule T_min={T_min} must be > 0", "e.g. T_min: 1")


def build_schedule(options: dict[str, Any] | str | None) -> Schedule:
    """A schedule from `method.schedule` (null, a name, or a dict with `name` and options)."""
    if options is None:
        return constant()
    if isinstance(options, str):
        return SCHEDULES.build(options)
    options = dict(options)
    return SCHEDULES.build(options.pop("name", "constant"), **options)

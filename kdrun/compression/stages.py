"""The stage framework: a registry of stages, what a stage may use from the run, and the runner.

Stages run in the order the user lists them (`compress=[prune,quantize]`); each one starts from the
previous stage's model and yields a summary row with the same fields as the training phases, plus
`nonzero_params`, `size_mb` and `latency_ms`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Protocol

import torch
from torch import nn

from kdrun.compression.measure import count_nonzero, cpu_latency_ms, size_mb
from kdrun.data.batches import Batch
from kdrun.errors import ConfigError
from kdrun.methods.base import Objective
from kdrun.models import count_parameters
from kdrun.registry import Registry
from kdrun.results import PhaseResult, PhaseSummary

log = logging.getLogger("kdrun")


@dataclass
class StageContext:
    """What a stage may use from the run: plain values and callables, no config objects."""

    run_dir: Path
    objective: Objective  # the distilled phase's objective: fine-tuning keeps distilling
    train: Callable[[str, nn.Module, Objective, int], PhaseResult]  # the run's one training loop
    evaluate: Callable[[nn.Module, str], float]  # accuracy on 'val' or 'test', on the model's device
    batches: Callable[[str, torch.device], Iterable[Batch]]  # a whole split in evaluation batches, in order, on a device
    latency_inputs: torch.Tensor  # one batch of test inputs, timed on the CPU
    latency_repeats: int


@dataclass
class StageOutcome:
    """A stage's compressed model, where it was saved, and its fine-tuning result if it trained."""

    model: nn.Module
    weights: Path
    result: Optional[PhaseResult] = None
    extra: dict[str, Any] = field(default_factory=dict)


class Stage(Protocol):
    phase: str  # its row's name in the table and summary.json
    final: bool  # True when no stage can follow (its model is no longer plain float weights)

    def check(self, model: nn.Module) -> None: ...
    def apply(self, model: nn.Module, context: StageContext) -> StageOutcome: ...


STAGES: Registry = Registry("compression stage")


def build_stages(names: list[str], options: dict[str, dict[str, Any]], student: nn.Module) -> list[Stage]:
    """The configured stages, checked against an (untrained) student before any training starts.

    Raises:
        ConfigError: unknown or repeated stage, bad order, bad option, or a student the stage cannot handle.
    """
    check_stage_order(names)
    stages = [STAGES.build(name, **options.get(name, {})) for name in names]
    for stage in stages:
        stage.check(student)
    return stages


def check_stage_order(names: list[str]) -> None:
    if len(set(names)) != len(names):
        raise ConfigError(f"compress={names} lists a stage twice", "list each stage once, e.g. compress=[prune,quantize]")
    for name in names[:-1]:
        if getattr(STAGES.get(name), "final", False):
            raise ConfigError(f"compress={names}: '{name}' must be the last stage", f"move '{name}' to the end of the list")


def run_stages(stages: list[Stage], model: nn.Module, context: StageContext, phases: dict[str, PhaseSummary], source: str) -> None:
    """Apply the stages in order; each row lands in `phases` as soon as its stage is done."""
    measure_phase(phases[source], model, context)
    for stage in stages:
        started = time.perf_counter()
        outcome = stage.apply(model, context)
        row = stage_row(outcome, context, source, time.perf_counter() - started)
        phases[stage.phase] = row
        log.info(
            "%s: test %.4f, %d of %d weights non-zero, %.3f MB, %.2f ms per batch (CPU)",
            stage.phase, row.test_acc, row.nonzero_params, row.params, row.size_mb, row.latency_ms,
        )
        model, source = outcome.model, stage.phase


def stage_row(outcome: StageOutcome, context: StageContext, source: str, seconds: float) -> PhaseSummary:
    """A stage's summary row: the training phases' fields, then the compression measurements."""
    result = outcome.result
    test_acc = context.evaluate(outcome.model, "test")  # the final model's, even after (fake-quant) training
    if result is None:
        last, best_epoch, best_val_acc = test_acc, None, context.evaluate(outcome.model, "val")
    else:  # the fine-tuning's own numbers: last epoch, best epoch and its validation accuracy
        last, best_epoch, best_val_acc = result.test_acc_last, result.best_epoch, result.best_val_acc
    row = PhaseSummary(f"from {source}", test_acc, last, best_epoch, best_val_acc, count_parameters(outcome.model), seconds,
                       weights=str(outcome.weights), extra=dict(outcome.extra))
    measure_phase(row, outcome.model, context)
    return row


def measure_phase(row: PhaseSummary, model: nn.Module, context: StageContext) -> None:
    """Add non-zero parameters, file size and CPU latency to a phase row (whose weights file exists)."""
    row.nonzero_params = count_nonzero(model)
    row.size_mb = size_mb(Path(row.weights))
    row.latency_ms = cpu_latency_ms(model, context.latency_inputs, context.latency_repeats)

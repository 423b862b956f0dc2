"""The bridge between a run and the compression stages: the run's context in, plain values and callables out."""

from __future__ import annotations

import torch
from torch import nn

from kdrun.compression.stages import StageContext, build_stages, run_stages
from kdrun.data.streaming import in_order_batches
from kdrun.methods.base import Objective
from kdrun.training.context import RunContext
from kdrun.training.loop import evaluate


def compress_student(context: RunContext, student: nn.Module, objective: Objective) -> None:
    """Run the configured stages on the distilled student; their rows go into the run's phases."""
    compression = context.settings.compression
    stages = build_stages(compression.stages, compression.options, student)
    stage_context = StageContext(
        run_dir=context.run_dir,
        objective=objective,
        train=context.train,
        evaluate=lambda model, split: evaluate(model, context.whole_split(split, model_device(model))),
        batches=context.whole_split,
        latency_inputs=latency_batch(context, compression.measure_batch_size or context.eval_batch_size),
        latency_repeats=compression.measure_repeats,
    )
    run_stages(stages, student, stage_context, context.progress.phases, source="distilled")


def latency_batch(context: RunContext, size: int) -> torch.Tensor:
    """`size` normalised test inputs (test samples repeated if the split is smaller), on the CPU."""
    data = context.data
    batches = in_order_batches(data.test, data.mean, data.std, size, torch.device("cpu"), seed=context.settings.seed)
    inputs = next(iter(batches)).inputs
    repeats = -(-size // inputs.shape[0])
    return inputs.repeat(repeats, *([1] * (inputs.dim() - 1)))[:size]


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device

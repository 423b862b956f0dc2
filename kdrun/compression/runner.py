"""The bridge between a Run and the compression stages: config in, plain values and callables out."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from kdrun.compression.stages import StageContext, build_stages, run_stages
from kdrun.data.batches import InMemoryBatches
from kdrun.data.streaming import in_order_batches
from kdrun.methods.base import Objective
from kdrun.training.loop import evaluate


def check_compression(run: Any, student: nn.Module) -> None:
    """Build the configured stages against an untrained student: bad options fail before training."""
    if run.cfg.compress:
        build_stages(list(run.cfg.compress), stage_options(run), student)


def compress_student(run: Any, student: nn.Module, objective: Objective) -> None:
    """Run the configured stages on the distilled student; their rows go into run.phases."""
    stages = build_stages(list(run.cfg.compress), stage_options(run), student)
    measure = run.cfg.compression.measure
    context = StageContext(
        run_dir=run.run_dir,
        objective=objective,
        train=run.train,
        evaluate=lambda model, split: evaluate(model, split_batches(run, split, model_device(model))),
        batches=partial(split_batches, run),
        latency_inputs=latency_batch(run, measure.batch_size or run.eval_batch_size),
        latency_repeats=measure.repeats,
    )
    run_stages(stages, student, context, run.phases, source="distilled")


def stage_options(run: Any) -> dict[str, dict[str, Any]]:
    return {name: dict(OmegaConf.to_container(node, resolve=True)) for name, node in run.cfg.compression.items()
            if name != "measure"}


def split_batches(run: Any, split: str, device: torch.device) -> InMemoryBatches:
    """Evaluation batches of a split on `device` (quantised models run on the CPU whatever the run's device)."""
    data = run.data
    part = run.splits["train" if split == "train_eval" else split]
    return in_order_batches(part, data.mean, data.std, run.eval_batch_size, device, seed=run.cfg.seed)


def latency_batch(run: Any, size: int) -> torch.Tensor:
    """`size` normalised test inputs (test samples repeated if the split is smaller), on the CPU."""
    batches = in_order_batches(run.splits["test"], run.data.mean, run.data.std, size, torch.device("cpu"), seed=run.cfg.seed)
    inputs = next(iter(batches)).inputs
    repeats = -(-size // inputs.shape[0])
    return inputs.repeat(repeats, *([1] * (inputs.dim() - 1)))[:size]


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device

"""One run, top to bottom: teacher source -> independent student -> distilled student -> compression -> export.

This is the story of `kdrun train` once the config is plain settings (kdrun/training/from_config.py)
and the run dir is set up (kdrun/training/run.py). Each step adds its row to `progress.phases`, so
however a run ends, summary.json shows what it got done.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from kdrun import parallel
from kdrun.files import load_tensor, save_tensor, save_weights
from kdrun.methods import Objective
from kdrun.models import count_parameters
from kdrun.results import RunProgress
from kdrun.training.context import RunContext, open_run
from kdrun.training.loop import PhaseObserver
from kdrun.training.settings import RunSettings
from kdrun.training.sources import obtain_independent, obtain_teacher

log = logging.getLogger("kdrun")


def run_pipeline(settings: RunSettings, run_dir: Path, observer: PhaseObserver, progress: RunProgress) -> RunContext:
    """Teacher -> independent -> distilled -> compression -> export; rows land in progress.phases (and .export).

    Returns the run's context (its data and device), for callers that measure the run (kdrun bench).
    """
    context = open_run(settings, run_dir, observer, progress)  # device, data, and every config check
    teacher, logits_entry = obtain_teacher(context)  # teacher.checkpoint, the cache, or trained
    if settings.independent:
        obtain_independent(context)  # the baseline: cached or trained with cross-entropy alone
    student, method = distill(context, teacher, logits_entry)
    if settings.compression.stages:  # optional stages after distillation: prune, quantize (docs/compression.md)
        from kdrun.compression.runner import compress_student

        compress_student(context, student, method)
    if settings.export.formats and parallel.is_main():  # ONNX / torch.export files of the kept students (docs/export.md)
        from kdrun.export.from_run import export_run

        context.progress.export = export_run(settings.export, settings.student, context.data, context.progress.phases,
                                             context.run_dir, settings.seed)
    return context


def distill(context: RunContext, teacher: nn.Module, logits_entry: Optional[Path]) -> tuple[nn.Module, Objective]:
    """The distilled student: same seed as the independent one (same initial weights, same batch order)."""
    settings = context.settings
    torch.manual_seed(settings.seed)  # adapters (feature methods) start from the same weights in every run
    method = context.build_method(teacher, context.new_model(settings.student))
    logits_seconds = cache_teacher_logits(context, method, logits_entry)
    log.info("distillation loss: %s", method.describe())
    torch.manual_seed(settings.seed)
    student = context.new_model(settings.student)
    summary = context.train("distilled", student, method, settings.student_epochs).summary(count_parameters(student))
    weights = context.run_dir / "distilled.safetensors"
    save_weights(weights, student, {"phase": "distilled", "model": settings.student.name})
    summary.method, summary.T, summary.alpha = settings.method_name, settings.T, settings.alpha
    summary.teacher_logits_seconds, summary.weights = logits_seconds, str(weights)
    summary.extra_params = count_parameters(method)  # adapters: trained with the student, not exported
    context.progress.phases["distilled"] = summary
    return student, method


def cache_teacher_logits(context: RunContext, method: Objective, entry: Optional[Path]) -> float:
    """Teacher logits once per training sample instead of a teacher forward every step; returns the seconds.

    Valid only when the training inputs are deterministic: with random augmentation the teacher must see
    the same augmented batch as the student, so it runs every step. The logits are kept in the teacher's
    cache entry (its key covers the data), so later runs sharing the teacher skip even this pass.
    """
    teacher = method.teacher
    if not (context.settings.trainer.cache_teacher_logits and method.uses_cached_teacher_logits) or teacher is None:
        return 0.0
    if context.augmentation is not None:
        log.info("teacher logits not cached: random augmentation changes the inputs every epoch (dataset.augment)")
        return 0.0
    started, samples = time.perf_counter(), len(context.data.train)
    stored = entry / "train_logits.safetensors" if entry else None
    reused = load_tensor(stored, "logits") if stored is not None and stored.is_file() else None
    if reused is not None and reused.shape[0] == samples:
        teacher.cached_logits = reused.to(context.device)
        log.info("teacher logits loaded from the cache (%d samples)", samples)
        return time.perf_counter() - started
    logits = teacher.cache_logits(context.whole_split("train"), samples)
    if stored is not None:
        try:
            save_tensor(stored, "logits", logits)
        except OSError as error:  # a read-only cache_dir costs the next run this pass, nothing more
            log.info("teacher logits not kept in %s (%s)", stored.parent, error.strerror)
    seconds = time.perf_counter() - started
    log.info("teacher logits computed for %d training samples (%.2fs)", samples, seconds)
    return seconds

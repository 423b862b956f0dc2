"""Where the teacher and the independent student come from: a checkpoint, the model cache, or training.

Both are cached by everything that determines them (data and split, architecture, training config,
precision, seed; kdrun/model_cache.py), so a sweep over alpha, T or the method trains each once. A
cached model reports the test accuracies recorded when it was trained if the test split and device
type are the same; otherwise it is tested again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdrun.files import load_weights, save_weights, sha256_of
from kdrun.methods import CrossEntropy
from kdrun.model_cache import ModelCache, cache_key
from kdrun.models import count_parameters
from kdrun.models.identity import architecture_identity
from kdrun.results import PhaseSummary
from kdrun.training.context import RunContext
from kdrun.training.loop import evaluate
from kdrun.training.settings import ModelSpec

log = logging.getLogger("kdrun")


def obtain_teacher(context: RunContext) -> tuple[nn.Module, Path]:
    """The teacher from `teacher.checkpoint`, else from the cache, else trained and cached.

    Returns the teacher and the cache folder that holds (or will hold) its training-set logits.
    """
    settings = context.settings
    torch.manual_seed(settings.seed)
    teacher = context.new_model(settings.teacher)
    identity = model_identity(context, settings.teacher, settings.teacher_epochs, settings.teacher_augment)
    if settings.teacher_checkpoint is not None:
        context.progress.phases["teacher"] = checkpoint_teacher(context, teacher, settings.teacher_checkpoint)
        return teacher, checkpoint_logits_entry(settings.cache_dir, settings.teacher_checkpoint, identity, context.device.type)
    summary, entry = cached_or_trained(context, "teacher", teacher, identity, "teachers")
    summary.weights = str(entry / "weights.safetensors")
    context.progress.phases["teacher"] = summary
    return teacher, entry


def obtain_independent(context: RunContext) -> None:
    """The CE-only student depends on data, model, budget, optimizer and seed, never on alpha/T/method:
    cached like the teacher so a sweep trains it once; a copy of its weights goes into the run dir."""
    settings = context.settings
    identity = model_identity(context, settings.student, settings.student_epochs, settings.augment)
    torch.manual_seed(settings.seed)
    student = context.new_model(settings.student)
    summary, entry = cached_or_trained(context, "independent", student, identity, "students")
    weights = context.run_dir / "independent.safetensors"  # runs stay self-contained
    save_weights(weights, student, {"phase": "independent", "model": settings.student.name})
    summary.weights, summary.cache_entry = str(weights), str(entry)
    context.progress.phases["independent"] = summary


def cached_or_trained(context: RunContext, phase: str, model: nn.Module, identity: dict[str, Any], kind: str) -> tuple[PhaseSummary, Path]:
    """Load `model` from its cache entry, or train it with cross-entropy and store it; one process at a time."""
    cache = ModelCache(context.settings.cache_dir, kind)
    entry = cache.entry(identity["model"]["name"], cache_key(identity))
    epochs = identity["training"]["epochs"]
    with cache.locked(entry):
        started = time.perf_counter()
        meta = cache.load(entry, model)
        if meta is not None:
            log.info("%s: loaded from cache %s", phase, entry)
            return cached_summary(context, model, meta, started), entry
        summary = context.train(phase, model, CrossEntropy(), epochs).summary(count_parameters(model))
        cache.store(entry, model, {"identity": identity, "result": summary.to_json(), "test_split": context.test_split()})
        log.info("%s: trained and stored in cache %s", phase, entry)
    return summary, entry


def checkpoint_teacher(context: RunContext, teacher: nn.Module, path: Path) -> PhaseSummary:
    started = time.perf_counter()
    load_weights(path, teacher, "teacher.checkpoint")
    val_acc = evaluate(teacher, context.batches("val"))
    test_acc = evaluate(teacher, context.batches("test"))
    log.info("teacher: loaded from checkpoint %s", path)
    return PhaseSummary("checkpoint", test_acc, test_acc, None, val_acc, count_parameters(teacher),
                        time.perf_counter() - started, weights=str(path))


def cached_summary(context: RunContext, model: nn.Module, meta: dict[str, Any], started: float) -> PhaseSummary:
    """A cached model's row: its recorded result, this run's loading time, and its test accuracies.

    The cache key covers train and val only, so a sweep over alpha and T would otherwise re-test the
    same teacher on the same images in every run (seconds per run for a CNN teacher). On another test
    split it is tested now; its last-epoch weights are gone, so both fields are the cached
    (best-validation) weights' accuracy.
    """
    recorded = PhaseSummary.from_json(meta["result"])
    if meta.get("test_split") == context.test_split():
        test_acc, test_acc_last = recorded.test_acc, recorded.test_acc_last
    else:
        test_acc = test_acc_last = evaluate(model, context.batches("test"))
    return PhaseSummary("cache", test_acc, test_acc_last, recorded.best_epoch, recorded.best_val_acc, recorded.params,
                        time.perf_counter() - started, train_seconds=recorded.seconds)


def model_identity(context: RunContext, spec: ModelSpec, epochs: int, augment: Any) -> dict[str, Any]:
    """Everything that determines a model trained with cross-entropy here; its hash is the cache key.

    `augment` is the augmentation spec that model's phase trained with (teacher.augment for the teacher).
    """
    settings, data, speed = context.settings, context.data, context.speed
    return {
        "data": {"name": data.name, "fingerprint": data.fingerprint(), "classes": data.class_names},
        "model": architecture_identity(spec.name, spec.options),  # with the hashes of a weights file / a custom model's code
        "training": {
            "epochs": epochs,
            "batch_size": settings.batch_size,
            "optimizer": settings.optimizer,
            "scheduler": settings.scheduler,
            "augment": augment,  # a name, or {name: shift, pixels: 2}
            "normalisation": [data.mean, data.std],
            "precision": str(speed.autocast_dtype or "float32"),  # bf16 training gives other weights
            "fast_dropout": speed.fast_dropout,  # other dropout masks, other weights
            "flush_denormal": speed.flush_denormal,  # in principle other rounding of the tiniest values
        },
        "seed": settings.seed,
    }


def checkpoint_logits_entry(cache_dir: Path, checkpoint: Path, identity: dict[str, Any], device_type: str) -> Path:
    """Where the training-set logits of a `teacher.checkpoint` teacher are kept between runs.

    Such a teacher has no cache entry of its own, yet every run of a sweep that passes the same file
    needs the same logits (a 27 s pass for a small CNN over Fashion-MNIST). The key is the file's
    content (not its path), the model, the data split and what changes the logits' rounding.
    """
    key = cache_key({
        "checkpoint_sha256": sha256_of(checkpoint), "model": identity["model"], "data": identity["data"],
        "normalisation": identity["training"]["normalisation"], "precision": identity["training"]["precision"],
        "device": device_type,
    })
    return cache_dir / "checkpoint_teachers" / f"{identity['model']['name']}-{key}"

"""What every step of one run shares: settings, run dir, device, speed settings, data, batches, the loop.

`open_run` makes the whole context before anything trains: it picks the device, loads the data and
builds the configured models, method and compression stages once, untrained, so that a config
mistake fails in seconds rather than after the teacher's training. Every phase then goes through
`RunContext.train` (the one loop, kdrun/training/loop.py) on batches from `RunContext.batches`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from kdrun import parallel
from kdrun.data import DataSplits
from kdrun.data.augment import Augmentation, build_augmentation
from kdrun.data.batches import InMemoryBatches
from kdrun.data.streaming import batches_for_this_rank, in_order_batches
from kdrun.methods import METHODS, FrozenTeacher, Objective
from kdrun.models import check_output
from kdrun.results import DatasetInfo, PhaseResult, RunProgress
from kdrun.training.checkpoint import CheckpointStore
from kdrun.training.device import place, resolve_device
from kdrun.training.evaluation_batch import evaluation_batch_size
from kdrun.training.from_config import build_architecture, load_data
from kdrun.training.loop import PhaseObserver, PhaseSettings, evaluate, train_phase
from kdrun.training.resume import checkpoint_store, prepare_resume
from kdrun.training.settings import ModelSpec, RunSettings
from kdrun.training.speed import SpeedSettings, prepare_host

log = logging.getLogger("kdrun")


@dataclass
class RunContext:
    """One run's shared state; phases land in `progress` as they finish."""

    settings: RunSettings
    run_dir: Path
    observer: PhaseObserver
    progress: RunProgress
    device: torch.device
    speed: SpeedSettings
    data: DataSplits
    augmentation: Optional[Augmentation]  # the students' (dataset.augment)
    eval_batch_size: int
    checkpoints: CheckpointStore
    teacher_augmentation: Optional[Augmentation] = None  # the teacher phase's (teacher.augment, default the dataset's)

    def augmentation_of(self, phase: str) -> Optional[Augmentation]:
        """The teacher trains on its own augmentation; every student phase (independent, distilled, the
        compression fine-tunes) on the dataset's, so with deterministic student inputs the teacher's
        logits can be cached even when the teacher itself trained on jittered images (Hinton et al. 2015)."""
        return self.teacher_augmentation if phase == "teacher" else self.augmentation

    def new_model(self, spec: ModelSpec) -> nn.Module:
        """A fresh model of `spec`, sized for this dataset, on the device and kdrun's fast path."""
        return new_model(spec, self.data, self.device, self.speed)

    def build_method(self, teacher: nn.Module, student: nn.Module) -> Objective:
        return build_method(self.settings, teacher, student, self.data, self.device)

    def train(self, phase: str, model: nn.Module, objective: Objective, epochs: int) -> PhaseResult:
        """`epochs` epochs of THE loop; resumable from this phase's checkpoint."""
        settings = self.settings
        phase_settings = PhaseSettings(epochs, settings.make_optimizer, settings.make_scheduler, self.speed,
                                       checkpoint=self.checkpoints.phase(phase))
        train = self.batches("train", shuffle=True, phase=phase)
        return train_phase(phase, model, objective.to(self.device), train, self.batches("val"), self.batches("test"),
                           phase_settings, self.observer)

    def batches(self, split: str, shuffle: bool = False, phase: str = "") -> InMemoryBatches:
        """Batches over 'train', 'val' or 'test' for training and evaluation: this rank's share under torchrun.

        Shuffled (training) batches apply the augmentation of `phase` (see augmentation_of)."""
        data = self.data
        size = self.settings.batch_size if shuffle else self.eval_batch_size
        augment = self.augmentation_of(phase) if shuffle else None
        return batches_for_this_rank(getattr(data, split), data.mean, data.std, size, self.device, shuffle,
                                     seed=self.settings.seed, augment=augment, topology=parallel.topology())

    def whole_split(self, split: str, device: Optional[torch.device] = None) -> InMemoryBatches:
        """A whole split in evaluation batches and in order, on every rank (teacher logits, compression)."""
        data = self.data
        return in_order_batches(getattr(data, split), data.mean, data.std, self.eval_batch_size, device or self.device,
                                seed=self.settings.seed)

    def evaluate(self, model: nn.Module, split: str) -> float:
        return evaluate(model, self.batches(split))

    def test_split(self) -> dict[str, str]:
        """What a recorded test accuracy depends on besides the weights: the test data and the device type."""
        return {"fingerprint": self.data.test_fingerprint(), "device": self.device.type}


def open_run(settings: RunSettings, run_dir: Path, observer: PhaseObserver, progress: RunProgress) -> RunContext:
    """Device, speed settings, data and checkpoints of a run, with its configuration checked end to end.

    Raises:
        ConfigError: unavailable device, nothing to resume, unreadable data, a model or method that does not fit.
    """
    device = place(resolve_device(settings.device))
    speed = prepare_host(settings.trainer, device)
    progress.device, progress.dataset = str(device), DatasetInfo(settings.dataset["name"])
    checkpoints = checkpoint_store(run_dir, settings.recorded_config, settings.resume, settings.trainer.checkpoint_seconds)
    if settings.resume:  # the run dir must hold an unfinished run of this config; metrics.jsonl is cut back to it
        prepare_resume(run_dir, settings.recorded_config)
    augmentation = build_augmentation(settings.augment, "dataset.augment")  # a bad spec fails before the data loads
    teacher_augmentation = build_augmentation(settings.teacher_augment, "teacher.augment")
    data = load_data(settings.dataset, settings.seed)
    progress.dataset = DatasetInfo(settings.dataset["name"], len(data.train), len(data.val), len(data.test), data.class_names)
    log.info(
        "data: %s, %d train / %d val / %d test, input %s, %d classes, device %s",
        data.name, len(data.train), len(data.val), len(data.test), data.input_shape, data.num_classes, device,
    )
    eval_batch_size = check_configuration(settings, data, device, speed)
    return RunContext(settings, run_dir, observer, progress, device, speed, data, augmentation, eval_batch_size, checkpoints,
                      teacher_augmentation)


def check_configuration(settings: RunSettings, data: DataSplits, device: torch.device, speed: SpeedSettings) -> int:
    """Build the models, the method and the compression stages once, untrained, and check the export settings;
    returns the evaluation batch size.

    The probe models consume the global generator; every phase reseeds it before building its own model.
    """
    teacher = new_model(settings.teacher, data, device, speed)
    student = new_model(settings.student, data, device, speed)
    build_method(settings, teacher, student, data, device)
    eval_batch_size = evaluation_batch_size(settings.trainer.eval_batch_size, (teacher, student), data.input_shape, device)
    if settings.compression.stages:
        from kdrun.compression.stages import build_stages

        build_stages(settings.compression.stages, settings.compression.options, student)
    if settings.export.formats:  # formats, their packages and export_check, before any training
        from kdrun.export.from_run import check_export

        check_export(settings.export)
    return eval_batch_size


def new_model(spec: ModelSpec, data: DataSplits, device: torch.device, speed: SpeedSettings) -> nn.Module:
    model = build_architecture(spec, data)
    check_output(model, data.input_shape, data.num_classes)
    return speed.prepare(model.to(device))


def build_method(settings: RunSettings, teacher: nn.Module, student: nn.Module, data: DataSplits, device: torch.device) -> Objective:
    """The method, prepared on a student of the configured architecture (adapters get their shapes)."""
    options = dict(settings.method)
    method = METHODS.build(options.pop("name"), FrozenTeacher(teacher), settings.T, settings.alpha, **options)
    method.prepare(student, torch.zeros(2, *data.input_shape, device=device))
    return method

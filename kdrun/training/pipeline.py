"""One run, top to bottom: data, teacher (checkpoint, cache or trained), independent, distilled.

This is where the DictConfig stops: everything below gets plain values.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from kdrun.data import DataSplits
from kdrun.data.augment import build_augmentation
from kdrun.data.batches import InMemoryBatches
from kdrun.data.streaming import batches_for_this_rank, in_order_batches
from kdrun.files import load_tensor, load_weights, save_tensor, save_weights
from kdrun.methods import METHODS, CrossEntropy, FrozenTeacher, Objective
from kdrun.models import check_output, count_parameters
from kdrun.training.device import resolve_device, reuse_freed_host_memory
from kdrun.training.evaluation_batch import evaluation_batch_size
from kdrun.training.from_config import load_data, make_factory, model_from_group, plain
from kdrun.training.loop import PhaseObserver, PhaseResult, PhaseSettings, evaluate, train_phase
from kdrun.training.resume import checkpoint_store
from kdrun.training.speed import flush_subnormals, resolve_speed
from kdrun.training import distributed
from kdrun.training.rank_cache import RankAwareCache
from kdrun.training.teacher_cache import cache_key, checkpoint_logits_entry

log = logging.getLogger("kdrun")


class Run:
    """A run in progress: the config, where it writes, and the phase summaries filled in as they finish."""

    def __init__(self, cfg: DictConfig, run_dir: Path, observer: PhaseObserver) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.observer = observer
        self.device = distributed.place(resolve_device(cfg.device))
        if self.device.type == "cpu":
            reuse_freed_host_memory()  # no page faults for the per-step gradients (docs/performance.md)
        trainer = cfg.trainer
        self.speed = resolve_speed(trainer.precision, trainer.channels_last, trainer.compile, self.device, trainer.fast_dropout,
                                   trainer.flush_denormal)
        if self.speed.flush_denormal and not flush_subnormals():
            log.info("subnormal floats are flushed only on some CPU threads (torch's threads started before this run)")
        self.phases: dict[str, dict[str, Any]] = {}
        self.data: DataSplits | None = None
        self.teacher_entry: Path | None = None  # the teacher cache entry in use, if any
        self.checkpoints = checkpoint_store(cfg, run_dir)  # per-epoch state of each phase (resume=true)

    def execute(self) -> None:
        """Teacher -> independent student -> distilled student; results land in self.phases."""
        cfg = self.cfg
        self.data = load_data(cfg.dataset, cfg.seed)
        self.augmentation = build_augmentation(cfg.dataset.get("augment"))
        log.info(
            "data: %s, %d train / %d val / %d test, input %s, %d classes, device %s",
            self.data.name, len(self.data.train), len(self.data.val), len(self.data.test),
            self.data.input_shape, self.data.num_classes, self.device,
        )
        self.splits = {name: getattr(self.data, name) for name in ("train", "val", "test")}
        self.check_configuration()
        teacher = self.obtain_teacher()
        if cfg.independent:
            self.obtain_independent()
        torch.manual_seed(cfg.seed)  # adapters (feature methods) start from the same weights in every run
        method = self.build_method(teacher, self.new_model(cfg.student))
        logits_seconds = self.cache_teacher_logits(method)
        log.info("distillation loss: %s", method.describe())
        extra = {"method": cfg.method.name, "T": cfg.T, "alpha": cfg.alpha, "teacher_logits_seconds": logits_seconds}
        student = self.train_student("distilled", method, extra=extra)
        if cfg.compress:  # optional stages after distillation: prune, quantize (docs/compression.md)
            from kdrun.compression.runner import compress_student

            compress_student(self, student, method)

    def check_configuration(self) -> None:
        """Build the models and the method once, untrained, so config mistakes surface before any training."""
        teacher = self.new_model(self.cfg.teacher)
        student = self.new_model(self.cfg.student)
        self.build_method(teacher, student)
        self.eval_batch_size = evaluation_batch_size(
            self.cfg.trainer.eval_batch_size, (teacher, student), self.data.input_shape, self.device)
        if self.cfg.compress:
            from kdrun.compression.runner import check_compression

            check_compression(self, student)

    def cache_teacher_logits(self, method: Objective) -> float:
        """Teacher logits once per training sample instead of a teacher forward every step.

        Valid only when the training inputs are deterministic: with random augmentation the teacher
        must see the same augmented batch as the student, so it runs every step. Returns the seconds.
        """
        wanted = self.cfg.trainer.cache_teacher_logits and method.uses_cached_teacher_logits
        if not wanted or getattr(method, "teacher", None) is None:
            return 0.0
        if self.augmentation is not None:
            log.info("teacher logits not cached: random augmentation changes the inputs every epoch")
            return 0.0
        started = time.perf_counter()
        stored = self.teacher_entry / "train_logits.safetensors" if self.teacher_entry else None
        reused = load_tensor(stored, "logits") if stored is not None and stored.is_file() else None
        if reused is not None and reused.shape[0] == len(self.data.train):
            method.teacher.cached_logits = reused.to(self.device)
            log.info("teacher logits loaded from the cache (%d samples)", len(self.data.train))
            return time.perf_counter() - started
        logits = method.teacher.cache_logits(self.batches("train_eval"), len(self.data.train))
        if stored is not None:  # the entry's key covers the data, so later runs can reuse them
            try:
                save_tensor(stored, "logits", logits)
            except OSError as error:  # a read-only cache_dir costs the next run this pass, nothing more
                log.info("teacher logits not kept in %s (%s)", stored.parent, error.strerror)
        seconds = time.perf_counter() - started
        log.info("teacher logits computed for %d training samples (%.2fs)", len(self.data.train), seconds)
        return seconds

    def build_method(self, teacher: nn.Module, student: nn.Module) -> Objective:
        """The method, prepared on a student of the configured architecture (adapters get their shapes)."""
        options = plain(self.cfg.method)
        method = METHODS.build(options.pop("name"), FrozenTeacher(teacher), self.cfg.T, self.cfg.alpha, **options)
        method.prepare(student, torch.zeros(2, *self.data.input_shape, device=self.device))
        return method

    # -- teacher ------------------------------------------------------------------------------------
    def obtain_teacher(self) -> nn.Module:
        """The teacher from `teacher.checkpoint`, else from the cache, else trained and cached."""
        cfg = self.cfg
        options = plain(cfg.teacher)
        checkpoint = options.pop("checkpoint", None)
        name = options.pop("name")
        torch.manual_seed(cfg.seed)
        teacher = self.new_model(cfg.teacher)
        cache_dir, identity = Path(cfg.cache_dir).expanduser().resolve(), self.teacher_identity(name, options)
        if checkpoint:
            path = Path(checkpoint).expanduser().resolve()
            teacher = self.load_checkpoint_teacher(teacher, path)
            self.teacher_entry = checkpoint_logits_entry(cache_dir, path, identity, self.device.type)  # logits only
            return teacher
        cache = RankAwareCache(cache_dir)
        entry = cache.entry(name, cache_key(identity))
        self.teacher_entry = entry
        with cache.locked(entry):
            started = time.perf_counter()
            meta = cache.load(entry, teacher)
            if meta is not None:
                log.info("teacher: loaded from cache %s", entry)
                self.phases["teacher"] = {
                    **meta["result"],
                    "source": "cache",
                    **self.cached_test_accuracy(teacher, meta),
                    "seconds": time.perf_counter() - started,
                    "train_seconds": meta["result"]["seconds"],
                    "weights": str(entry / "weights.safetensors"),
                }
                return teacher
            result = self.train("teacher", teacher, CrossEntropy(), cfg.teacher_epochs)
            summary = result.summary(count_parameters(teacher))
            cache.store(entry, teacher, {"identity": identity, "result": summary, "test_split": self.test_split()})
            log.info("teacher: trained and stored in cache %s", entry)
        self.phases["teacher"] = {**summary, "weights": str(entry / "weights.safetensors")}
        return teacher

    def load_checkpoint_teacher(self, teacher: nn.Module, path: Path) -> nn.Module:
        started = time.perf_counter()
        load_weights(path, teacher, "teacher.checkpoint")
        val_acc = evaluate(teacher, self.batches("val"))
        test_acc = self.test_accuracy(teacher)
        log.info("teacher: loaded from checkpoint %s", path)
        self.phases["teacher"] = {
            "source": "checkpoint", "test_acc": test_acc, "test_acc_last": test_acc, "best_epoch": None,
            "best_val_acc": val_acc, "params": count_parameters(teacher),
            "seconds": time.perf_counter() - started, "weights": str(path),
        }
        return teacher

    def teacher_identity(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """Everything that determines a trained teacher; its hash is the cache key."""
        cfg = self.cfg
        return {
            "data": {"name": self.data.name, "fingerprint": self.data.fingerprint(), "classes": self.data.class_names},
            "model": {"name": name, **options},
            "training": {
                "epochs": cfg.teacher_epochs,
                "batch_size": cfg.batch_size,
                "optimizer": plain(cfg.optimizer),
                "scheduler": plain(cfg.scheduler) if cfg.scheduler is not None else None,
                "augment": plain(cfg.dataset).get("augment"),  # a name, or {name: shift, pixels: 2}
                "normalisation": [self.data.mean, self.data.std],
                "precision": str(self.speed.autocast_dtype or "float32"),  # bf16 training gives other weights
                "fast_dropout": self.speed.fast_dropout,  # other dropout masks, other weights
                "flush_denormal": self.speed.flush_denormal,  # in principle other rounding of the tiniest values
            },
            "seed": cfg.seed,
        }

    # -- students -----------------------------------------------------------------------------------
    def obtain_independent(self) -> None:
        """The CE-only student depends on data, model, budget, optimizer and seed, never on alpha/T/method:
        cache it like the teacher so a sweep trains it once (same lock, same atomic entries)."""
        cfg = self.cfg
        options = plain(cfg.student)
        name = options.pop("name")
        identity = self.teacher_identity(name, options)
        identity["training"]["epochs"] = cfg.student_epochs
        cache = RankAwareCache(Path(cfg.cache_dir).expanduser().resolve(), "students")
        entry = cache.entry(name, cache_key(identity))
        torch.manual_seed(cfg.seed)
        student = self.new_model(cfg.student)
        with cache.locked(entry):
            started = time.perf_counter()
            meta = cache.load(entry, student)
            if meta is None:
                result = self.train("independent", student, CrossEntropy(), cfg.student_epochs)
                summary = result.summary(count_parameters(student))
                cache.store(entry, student, {"identity": identity, "result": summary, "test_split": self.test_split()})
                log.info("independent: trained and stored in cache %s", entry)
            else:
                log.info("independent: loaded from cache %s", entry)
                summary = {**meta["result"], "source": "cache", **self.cached_test_accuracy(student, meta),
                           "seconds": time.perf_counter() - started, "train_seconds": meta["result"]["seconds"]}
        weights = self.run_dir / "independent.safetensors"  # a copy in the run: runs stay self-contained
        save_weights(weights, student, {"phase": "independent", "model": name})
        self.phases["independent"] = {**summary, "weights": str(weights), "cache_entry": str(entry)}

    def train_student(self, phase: str, objective: Objective, extra: dict[str, Any] | None = None) -> nn.Module:
        """Both students start from the same seed: same initial weights, same batch order."""
        name = self.cfg.student.name
        torch.manual_seed(self.cfg.seed)
        student = self.new_model(self.cfg.student)
        result = self.train(phase, student, objective, self.cfg.student_epochs)
        weights = self.run_dir / f"{phase}.safetensors"
        save_weights(weights, student, {"phase": phase, "model": name})
        self.phases[phase] = {**result.summary(count_parameters(student)), **(extra or {}), "weights": str(weights)}
        self.phases[phase]["extra_params"] = count_parameters(objective)  # adapters: trained, not exported
        return student

    # -- shared helpers -----------------------------------------------------------------------------
    def new_model(self, model_cfg: DictConfig) -> nn.Module:
        """A fresh model from a teacher/student config group, sized for this dataset, on kdrun's fast path."""
        model = model_from_group(model_cfg, self.data)
        check_output(model, self.data.input_shape, self.data.num_classes)
        return self.speed.prepare(model.to(self.device))

    def train(self, phase: str, model: nn.Module, objective: Objective, epochs: int) -> PhaseResult:
        cfg = self.cfg
        settings = PhaseSettings(
            epochs, make_factory(cfg.optimizer, "optimizer"), make_factory(cfg.scheduler, "scheduler"), self.speed,
            checkpoint=self.checkpoints.phase(phase),
        )
        train_batches = self.batches("train", shuffle=True)
        return train_phase(
            phase, model, objective.to(self.device), train_batches, self.batches("val"), self.batches("test"),
            settings, self.observer,
        )

    def batches(self, split: str, shuffle: bool = False) -> InMemoryBatches:
        """Batches over a split; 'train_eval' is the training split in evaluation batches, in order."""
        size = self.cfg.batch_size if shuffle else self.eval_batch_size
        part = self.splits["train" if split == "train_eval" else split]
        if split == "train_eval":  # teacher logits: the whole split on every rank
            return in_order_batches(part, self.data.mean, self.data.std, size, self.device, seed=self.cfg.seed)
        return batches_for_this_rank(
            part, self.data.mean, self.data.std, size, self.device, shuffle, seed=self.cfg.seed,
            augment=self.augmentation if shuffle else None,
        )

    def test_accuracy(self, model: nn.Module) -> float:
        return evaluate(model, self.batches("test"))

    def test_split(self) -> dict[str, str]:
        """What a recorded test accuracy depends on besides the weights: the test data and the device type."""
        return {"fingerprint": self.data.test_fingerprint(), "device": self.device.type}

    def cached_test_accuracy(self, model: nn.Module, meta: dict[str, Any]) -> dict[str, float]:
        """A cached model's test accuracies as recorded when it was trained, if that was on this test split.

        The cache key covers train and val only, so a sweep over alpha and T would otherwise re-test
        the same teacher on the same images in every run (seconds per run for a CNN teacher). On
        another test split it is tested now; its last-epoch weights are gone, so both fields are the
        cached (best-validation) weights' accuracy.
        """
        if meta.get("test_split") == self.test_split():
            return {"test_acc": meta["result"]["test_acc"], "test_acc_last": meta["result"]["test_acc_last"]}
        test_acc = self.test_accuracy(model)
        return {"test_acc": test_acc, "test_acc_last": test_acc}


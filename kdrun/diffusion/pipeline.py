"""One diffusion run, top to bottom: data, teacher, FID features, then per round distil and evaluate.

    teacher (checkpoint, cache or trained)  ->  FID of the teacher with DDIM at N steps
    for n in N/2, N/4, ..., target:  student <- copy of the current teacher; Algorithm 2 for
        distill.train_steps; FID of the teacher with DDIM at n steps (the baseline) and of the
        student at n steps; the student becomes the next round's teacher.

This is where the DictConfig stops: everything below gets plain values. Every finished piece is
on disk before the next starts (the teacher in the cache, each student in students/, each
evaluation a line of metrics.jsonl), so a resumed run skips what is done.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig
from torch import nn

from kdrun.diffusion.checkpoint import PhaseCheckpoints
from kdrun.diffusion.config import optional_path
from kdrun.diffusion.events import EventLog
from kdrun.diffusion.feature_classifier import obtain_classifier
from kdrun.diffusion.fid import ClassifierFeatures, FidScorer, from_uint8, inception_features, to_uint8
from kdrun.diffusion.grids import save_grid
from kdrun.diffusion.networks import build_network
from kdrun.diffusion.sampler import DdimSampler, fixed_noise, sample_many
from kdrun.diffusion.schedule import CosineSchedule
from kdrun.diffusion.target import denoising_terms
from kdrun.diffusion.training import PhaseSettings, distill_round, frozen, new_state, train_phase
from kdrun.diffusion_results import Evaluation, PhaseRecord
from kdrun.files import load_weights, save_weights
from kdrun.model_cache import ModelCache, cache_key
from kdrun.models import build_model, count_parameters
from kdrun.training.device import resolve_device
from kdrun.training.from_config import load_data, plain, recorded_config

log = logging.getLogger("kdrun")

RECORD_KEY = "kdrun_round"  # a student file's safetensors metadata: its round's metrics line


class DiffusionRun:
    """A run in progress; the summary is built from its attributes (teacher, fid, events)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, display: Any, steps: list[int]) -> None:
        self.cfg, self.run_dir, self.display, self.steps = cfg, run_dir, display, steps
        self.device = resolve_device(cfg.device)
        self.schedule = CosineSchedule(cfg.schedule.logsnr_min, cfg.schedule.logsnr_max)
        self.sampler = DdimSampler(self.schedule, steps[0])
        self.events = EventLog(run_dir / "metrics.jsonl", resume=bool(cfg.resume))
        self.checkpoints = PhaseCheckpoints(run_dir / "checkpoints", recorded_config(cfg), bool(cfg.resume),
                                            float(cfg.trainer.checkpoint_seconds))
        self.data = None
        self.teacher: dict[str, Any] = {}
        self.fid: dict[str, Any] = {}

    def execute(self) -> None:
        cfg = self.cfg
        self.data = load_data(plain(cfg.dataset), cfg.seed)
        self.shape = self.data.input_shape
        images = from_uint8(self.data.train.images).to(self.device)
        log.info("data: %s, %d training images %s, device %s; sampling steps %s", self.data.name, len(images),
                 self.shape, self.device, " -> ".join(map(str, self.steps)))
        self.check_inputs()
        self.checkpoints.check_config()
        teacher = self.obtain_teacher(images)
        self.scorer = self.fid_scorer()
        self.evaluate("teacher_ddim", teacher, self.steps[0])
        current = teacher
        for round_number, steps in enumerate(self.steps[1:], start=1):
            student = self.distill(round_number, current, steps, images)
            self.evaluate("teacher_ddim", teacher, steps)  # the baseline: the same teacher, fewer DDIM steps
            self.evaluate("distilled", student, steps)
            current = student
        self.checkpoints.remove_all()

    def check_inputs(self) -> None:
        """Config and file mistakes surface in seconds, before anything trains: the network's shape rules,
        a teacher or FID-classifier checkpoint of another architecture, Inception weights missing or wrong."""
        network = self.new_network()
        if self.cfg.network.checkpoint:
            load_weights(optional_path(self.cfg.network.checkpoint), network, "network.checkpoint (teacher)")
        classifier = plain(self.cfg.fid.classifier)
        if classifier.get("checkpoint") and not self.wants_inception():
            path = optional_path(classifier.pop("checkpoint"))
            load_weights(path, build_model(classifier.pop("name"), self.shape, self.data.num_classes, **classifier),
                         "fid.classifier.checkpoint")
        self.inception = inception_features(self.inception_weights()) if self.wants_inception() else None

    def wants_inception(self) -> bool:
        features = self.cfg.fid.features
        return features == "inception" or (features == "auto" and self.inception_weights() is not None)

    def inception_weights(self) -> Optional[Path]:
        return optional_path(self.cfg.fid.inception_weights)

    # -- teacher ------------------------------------------------------------------------------------
    def new_network(self) -> nn.Module:
        options = plain(self.cfg.network)
        options.pop("checkpoint", None)
        return build_network(options.pop("name"), self.shape, **options).to(self.device)

    def obtain_teacher(self, images: torch.Tensor) -> nn.Module:
        """From `network.checkpoint`, else from the cache, else trained (resumable) and cached."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        teacher = self.new_network()
        info: dict[str, Any] = {"sampling_steps": self.steps[0], "params": count_parameters(teacher)}
        started = time.perf_counter()
        if cfg.network.checkpoint:
            path = optional_path(cfg.network.checkpoint)
            load_weights(path, teacher, "network.checkpoint (teacher)")
            self.teacher = {**info, "source": "checkpoint", "weights": str(path), "seconds": time.perf_counter() - started}
            return frozen(teacher)
        cache = ModelCache(Path(cfg.cache_dir).expanduser().resolve(), "diffusion_teachers")
        entry = cache.entry(cfg.network.name, cache_key(self.teacher_identity()))
        with cache.locked(entry):
            meta = cache.load(entry, teacher)
            if meta is not None:
                log.info("teacher: loaded from cache %s", entry)
                info.update(source="cache", train_seconds=meta["result"]["seconds"], loss_last=meta["result"]["loss_last"])
            else:
                teacher, record = self.train_teacher(teacher, images)
                cache.store(entry, teacher, {"identity": self.teacher_identity(), "result": record.to_dict()})
                self.events.record_once(record)
                self.checkpoints.discard("teacher")
                log.info("teacher: trained and stored in cache %s", entry)
                info.update(source="trained", train_seconds=record.seconds, loss_last=record.loss_last)
        self.teacher = {**info, "weights": str(entry / "weights.safetensors"), "seconds": time.perf_counter() - started}
        return frozen(teacher)

    def teacher_identity(self) -> dict[str, Any]:
        """Everything that determines a trained teacher; its hash is the cache key."""
        cfg, data = self.cfg, self.data
        network = plain(cfg.network)
        network.pop("checkpoint", None)
        training = plain(cfg.teacher)
        training.pop("sampling_steps")  # how it is sampled, not how it is trained
        return {"purpose": "diffusion_teacher", "data": {"name": data.name, "fingerprint": data.fingerprint()},
                "network": network, "schedule": plain(cfg.schedule), "training": training, "flip": cfg.flip,
                "parameterisation": "v", "loss": "x-space, max(SNR, 1)", "seed": cfg.seed}

    def train_teacher(self, model: nn.Module, images: torch.Tensor) -> tuple[nn.Module, PhaseRecord]:
        settings = self.settings(self.cfg.teacher)
        state = new_state(model, settings, self.cfg.seed * 1000, self.device)
        objective = lambda network, x, generator: denoising_terms(network, x, self.schedule, generator)  # noqa: E731
        outcome = train_phase("teacher", state, objective, images, settings, self.display, self.checkpoints)
        return outcome.model, self.make_record("teacher", 0, self.steps[0], settings, outcome)

    # -- distillation -------------------------------------------------------------------------------
    def distill(self, round_number: int, teacher: nn.Module, steps: int, images: torch.Tensor) -> nn.Module:
        """Algorithm 2 for one halving: a student of `teacher` that samples in `steps` steps."""
        path = self.run_dir / "students" / f"steps_{steps:04d}.safetensors"
        if self.cfg.resume and path.is_file():
            student = copy.deepcopy(teacher)
            load_weights(path, student, "student checkpoint")
            self.events.record_once(self.saved_record(path))
            log.info("round %d (%d -> %d steps): student loaded from %s", round_number, 2 * steps, steps, path)
            return frozen(student)
        settings, phase = self.settings(self.cfg.distill), f"distill_{steps}"
        outcome = distill_round(phase, teacher, steps, images, settings, self.schedule, self.cfg.seed * 1000 + round_number,
                                self.display, self.checkpoints)
        record = self.make_record("distill", round_number, steps, settings, outcome)
        save_weights(path, outcome.model, {RECORD_KEY: json.dumps(record.to_dict())})
        self.events.record_once(record)
        self.checkpoints.discard(phase)
        return frozen(outcome.model)

    def settings(self, options: DictConfig) -> PhaseSettings:
        return PhaseSettings(options.train_steps, options.batch_size, options.lr, options.warmup_steps, options.anneal,
                             options.ema_decay, options.grad_clip, bool(self.cfg.flip), int(self.cfg.trainer.log_every))

    def make_record(self, phase: str, round_number: int, steps: int, settings: PhaseSettings, outcome: Any) -> PhaseRecord:
        record = PhaseRecord(phase, round_number, steps, settings.steps, outcome.loss, outcome.loss_last, settings.lr,
                             settings.ema_decay, outcome.samples_per_s, outcome.seconds)
        log.info("%s: done in %.1fs, loss (last 10%%) %s", phase if phase == "teacher" else f"round {round_number}",
                 outcome.seconds, ", ".join(f"{name} {value:.4f}" for name, value in outcome.loss_last.items()))
        return record

    @staticmethod
    def saved_record(path: Path) -> PhaseRecord:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as stream:
            return PhaseRecord(**json.loads((stream.metadata() or {})[RECORD_KEY]))

    # -- evaluation ---------------------------------------------------------------------------------
    def fid_scorer(self) -> FidScorer:
        """FID features (Inception with local weights, else the classifier), reference = training images."""
        fid, data = self.cfg.fid, self.data
        if self.inception is not None:
            features = self.inception
            self.fid = {"kind": "inception", "label": "FID (Inception-v3 pool3, 2048-d)"}
        else:
            classifier, info = obtain_classifier(data, plain(fid.classifier), plain(fid.classifier_training), self.cfg.seed,
                                                 Path(self.cfg.cache_dir).expanduser().resolve(), self.device, self.display)
            features = ClassifierFeatures(classifier, data.mean, data.std)
            self.fid = {"kind": "classifier", "classifier": info, "label": (
                f"FD on {info['name']} classifier features ({features.num_features}-d, trained on {data.name}; not Inception FID)")}
        scorer = FidScorer(features, data.train.images, fid.batch_size, self.device)
        floor_images = data.test.images[: fid.samples]
        floor = scorer.score(floor_images).value
        self.fid.update(samples=fid.samples, noise_seeds=fid.noise_seeds, reference=f"{data.name} training split",
                        reference_images=scorer.reference_count, floor=floor, floor_images=len(floor_images))
        log.info("%s; reference: %d training images; real test images (%d) score %.3f (the floor)", self.fid["label"],
                 scorer.reference_count, len(floor_images), floor)
        return scorer

    def evaluate(self, sampler: str, model: nn.Module, steps: int) -> Optional[Evaluation]:
        """FID of `model` sampled with `steps` DDIM steps, over fid.noise_seeds sets of fixed noise."""
        if self.events.evaluated(sampler, steps):
            return None
        fid = self.cfg.fid
        values, seconds, grid = [], 0.0, f"samples/steps_{steps:04d}_{sampler}.png"
        label = f"FID {sampler} {steps} steps"
        self.display.phase_started(label, fid.noise_seeds, 1)
        for index in range(fid.noise_seeds):
            noise = fixed_noise(fid.samples, self.shape, seed=self.cfg.seed * 1000 + 100 + index)
            sampled = sample_many(self.sampler, model.eval(), noise, steps, fid.batch_size, self.device)
            pixels = to_uint8(sampled.images)
            values.append(self.scorer.score(pixels).value)
            seconds += sampled.seconds
            if index == 0:  # the same noise in every grid: rows differ only in sampler and steps
                save_grid(pixels[: self.cfg.grid_samples], self.run_dir / grid)
            self.display.step_done(label)
        self.display.phase_done(label)
        tensor = torch.tensor(values, dtype=torch.float64)
        evaluation = Evaluation(sampler, steps, float(tensor.mean()), float(tensor.std()) if len(values) > 1 else None,
                                values, fid.samples, seconds / (fid.noise_seeds * fid.samples) * 1000, grid)
        self.events.record_once(evaluation)
        log.info("%-12s %4d steps: FID %.3f%s  (%.2f s per 1,000 samples)", sampler, steps, evaluation.fid,
                 f" ± {evaluation.fid_std:.3f}" if evaluation.fid_std is not None else "", evaluation.seconds_per_1000)
        return evaluation

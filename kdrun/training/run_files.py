"""The per-epoch observers of a run: metrics.jsonl with its console/train.log line, and a fan-out to several."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from kdrun.files import append_line
from kdrun.results import EpochRecord
from kdrun.training.loop import PhaseObserver

log = logging.getLogger("kdrun")


class MetricsLog:
    """The one writer of metrics.jsonl (a line per phase per epoch, flushed and synced each epoch),
    and the per-epoch line in the console and train.log."""

    def __init__(self, path: Path, epochs_by_phase: dict[str, int]) -> None:
        self.path = path
        self.epochs_by_phase = epochs_by_phase

    def phase_started(self, phase: str, epochs: int, steps_per_epoch: int) -> None:
        self.epochs_by_phase.setdefault(phase, epochs)  # phases not known up front (compression fine-tuning)
        log.info("%s: %d epochs x %d steps", phase, epochs, steps_per_epoch)

    def step_done(self, phase: str) -> None:
        pass

    def epoch_done(self, record: EpochRecord) -> None:
        append_line(self.path, json.dumps(record.to_dict()))
        terms = "  ".join(f"{name} {value:.4f}" for name, value in record.loss.items())
        log.info(
            "%-11s epoch %3d/%d  %s  train %.4f  val %.4f  %.0f samples/s  %.1fs",
            record.phase,
            record.epoch,
            self.epochs_by_phase.get(record.phase, 0),
            terms,
            record.train_acc,
            record.val_acc,
            record.samples_per_s,
            record.seconds,
        )

    def phase_done(self, phase: str) -> None:
        pass


class Observers:
    """Fans every progress event out to several observers."""

    def __init__(self, observers: Sequence[PhaseObserver]) -> None:
        self.observers = list(observers)

    def phase_started(self, phase: str, epochs: int, steps_per_epoch: int) -> None:
        for observer in self.observers:
            observer.phase_started(phase, epochs, steps_per_epoch)

    def step_done(self, phase: str) -> None:
        for observer in self.observers:
            observer.step_done(phase)

    def epoch_done(self, record: EpochRecord) -> None:
        for observer in self.observers:
            observer.epoch_done(record)

    def phase_done(self, phase: str) -> None:
        for observer in self.observers:
            observer.phase_done(phase)


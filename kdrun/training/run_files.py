"""What a run writes into its directory besides Hydra's .hydra/: metrics.jsonl and summary.json."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from kdrun.training.loop import EpochRecord, PhaseObserver

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
        with open(self.path, "a") as stream:
            stream.write(json.dumps(record.to_dict()) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
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


def gap_recovered(phases: dict[str, dict[str, Any]]) -> float | None:
    """(distilled - independent) / (teacher - independent): 1 = the whole teacher-student gap closed.

    None when a phase is missing or the teacher is no better than the independent student.
    """
    try:
        teacher, independent, distilled = (phases[name]["test_acc"] for name in ("teacher", "independent", "distilled"))
    except KeyError:
        return None
    gap = teacher - independent
    return (distilled - independent) / gap if gap > 0 else None

"""TensorBoard event files next to metrics.jsonl, so `tensorboard --logdir outputs` shows every run.

Optional: the `tensorboard` package is an extra (`pip install kdrun[tensorboard]`). One event
directory per phase (`<run>/tensorboard/<phase>/`) makes TensorBoard draw teacher, independent and
distilled student as separate runs on the same charts, so their curves compare directly.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Optional

from kdrun.errors import ConfigError
from kdrun.results import EpochRecord

log = logging.getLogger("kdrun")


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def wants_tensorboard(setting: Any) -> bool:
    """`auto` writes event files when the package is installed; `true` insists on it; `false` never."""
    if str(setting).lower() == "auto":
        return tensorboard_available()
    if setting is True and not tensorboard_available():
        raise ConfigError(
            "trainer.tensorboard=true but the tensorboard package is not installed",
            "pip install 'kdrun[tensorboard]', or set trainer.tensorboard=auto",
        )
    return bool(setting)


class TensorBoardLog:
    """A PhaseObserver writing each epoch's loss terms, accuracies, lr and T as scalars."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.writer: Optional[Any] = None

    def phase_started(self, phase: str, epochs: int, steps_per_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow and optional

        self.writer = SummaryWriter(log_dir=str(self.directory / phase))

    def step_done(self, phase: str) -> None:
        pass

    def epoch_done(self, record: EpochRecord) -> None:
        if self.writer is None:
            return
        scalars = {f"loss/{name}": value for name, value in record.loss.items()}
        scalars.update({"accuracy/train": record.train_acc, "accuracy/val": record.val_acc, "lr": record.lr,
                        "samples_per_s": record.samples_per_s})
        if record.T is not None:
            scalars["T"] = record.T
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, record.epoch)
        self.writer.flush()  # a crashed run keeps its curves up to the last epoch

    def phase_done(self, phase: str) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

"""Checkpoints of every phase, so a killed or interrupted run continues where it stopped.

A phase's checkpoint is ONE safetensors file, `<run_dir>/checkpoints/<phase>.safetensors`, rewritten
atomically after an epoch. Its tensors are the model, the objective (adapters), the best-validation
weights, the optimizer's and scheduler's tensors and the RNG states; its JSON header holds everything
else (epoch, best epoch, the metrics so far, the non-tensor optimizer state). One file means an
epoch's state is either wholly on disk or not at all; safetensors means reading it can never run code.
Restoring all of it (including the batch order's generator) makes a resumed run on the CPU continue
bit for bit like one that was never stopped.

Writing the optimizer state of a large model after every short epoch cost more than a tenth of a
small run (0.8 s of the default run's 6.6 s), so a checkpoint is written only once `trainer.checkpoint_seconds`
have passed since the last one (a kill loses at most that much training), and always after a phase's
last epoch. That final one marks the phase as done for a resume and leaves out the optimizer,
scheduler and scaler state, which no later epoch needs.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy
import torch
from torch import nn

from kdrun.errors import RunError
from kdrun.files import write_bytes_atomic, write_json_atomic

log = logging.getLogger("kdrun")

FORMAT = 1
METADATA_KEY = "kdrun_checkpoint"
CONFIG_FILE = "config.json"  # the config the run started with; a resume must match it


@dataclass
class Progress:
    """Where a phase stands after an epoch: what the loop needs to carry on."""

    epoch: int
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_acc: float
    history: list  # EpochRecords


class CheckpointStore:
    """The run's `checkpoints/` folder; hands out one PhaseCheckpoint per phase."""

    def __init__(self, directory: Path, config: dict[str, Any], resume: bool, interval_seconds: float = 0.0) -> None:
        self.directory = directory
        self.config = config
        self.resume = resume
        self.interval_seconds = interval_seconds  # between two checkpoints of a phase; 0 = every epoch

    def phase(self, name: str) -> "PhaseCheckpoint":
        return PhaseCheckpoint(self.directory / f"{name}.safetensors", self)

    def note_config(self) -> None:
        """Record the run's config before its first phase trains (a later resume is compared with it)."""
        path = self.directory / CONFIG_FILE
        if not path.is_file():  # files.py writes on rank 0 only
            write_json_atomic(path, self.config)


class PhaseCheckpoint:
    """Saves a phase after each epoch; on resume, puts everything back before the next epoch starts."""

    def __init__(self, path: Path, store: CheckpointStore) -> None:
        self.path = path
        self.store = store
        self.parts: dict[str, Any] = {}
        self.seconds_before = 0.0  # training time spent before an interruption
        self.started = self.last_written = time.perf_counter()

    def bind(self, model: nn.Module, objective: nn.Module, optimizer: Any, scheduler: Any, scaler: Any, batches: Any) -> None:
        """The objects whose state a checkpoint holds (created by the loop, restored in place)."""
        self.parts = {"model": model, "objective": objective, "optimizer": optimizer, "scheduler": scheduler,
                      "scaler": scaler, "generator": batches.generator}
        self.started = self.last_written = time.perf_counter()
        self.store.note_config()

    def restore(self, record_type: type) -> Optional[Progress]:
        """On resume: load the saved state into the bound objects; None when there is nothing to resume."""
        if not self.store.resume or not self.path.is_file():
            return None
        tensors, meta = read_checkpoint(self.path)
        parts = self.parts
        try:
            parts["model"].load_state_dict(_prefixed(tensors, "model."))
            parts["objective"].load_state_dict(_prefixed(tensors, "objective."))
            for name in ("optimizer", "scheduler", "scaler"):  # absent from a finished phase's checkpoint
                if parts[name] is not None and meta.get(name) is not None:
                    parts[name].load_state_dict(decode(meta[name], tensors))
        except (RuntimeError, KeyError, ValueError) as error:
            reason = " ".join(str(error).split())[:200]
            raise RunError(f"checkpoint {self.path} does not fit the configured phase ({reason})",
                           "delete it to retrain the phase, or resume with the original config") from None
        set_random_states(meta["rng"], tensors, parts["generator"])
        self.seconds_before = float(meta.get("seconds", 0.0))
        log.info("%s: resumed from %s after epoch %d", meta["phase"], self.path.name, meta["epoch"])
        history = [record_type(**record) for record in meta["history"]]
        return Progress(meta["epoch"], _prefixed(tensors, "best."), meta["best_epoch"], meta["best_val_acc"], history)

    def save(self, phase: str, progress: Progress, last_epoch: bool) -> None:
        """After an epoch: write the state atomically (temp file + fsync + rename) if one is due.

        Due after the phase's last epoch, and otherwise once `interval_seconds` have passed since the
        phase started or was last written.
        """
        due = last_epoch or time.perf_counter() - self.last_written >= self.store.interval_seconds
        if not due:
            return
        from safetensors.torch import save

        parts = {**self.parts, **dict.fromkeys(("optimizer", "scheduler", "scaler"))} if last_epoch else self.parts
        tensors: dict[str, torch.Tensor] = {}
        for prefix, state in (("model.", parts["model"].state_dict()), ("objective.", parts["objective"].state_dict()),
                              ("best.", progress.best_state)):
            tensors.update({prefix + name: value.detach().cpu().contiguous() for name, value in state.items()})
        meta = {
            "format": FORMAT, "phase": phase, "epoch": progress.epoch, "best_epoch": progress.best_epoch,
            "best_val_acc": progress.best_val_acc, "history": [record.to_dict() for record in progress.history],
            "seconds": self.seconds_before + time.perf_counter() - self.started,
            "optimizer": encode(parts["optimizer"].state_dict(), "optimizer", tensors) if parts["optimizer"] else None,
            "scheduler": encode(parts["scheduler"].state_dict(), "scheduler", tensors) if parts["scheduler"] else None,
            "scaler": encode(parts["scaler"].state_dict(), "scaler", tensors) if parts["scaler"] else None,
            "rng": random_states(tensors, parts["generator"]),
        }
        write_bytes_atomic(self.path, save(tensors, metadata={METADATA_KEY: json.dumps(meta)}))
        self.last_written = time.perf_counter()


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON header of a checkpoint file (safetensors: no code can run while reading)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as stream:
            meta = json.loads((stream.metadata() or {})[METADATA_KEY])
            tensors = {name: stream.get_tensor(name) for name in stream.keys()}
    except (SafetensorError, OSError, ValueError, KeyError) as error:
        raise RunError(f"checkpoint {path} is unreadable ({error})", "delete it to retrain that phase") from None
    return tensors, meta


def checkpoint_epoch(path: Path) -> Optional[int]:
    """The last completed epoch recorded in a checkpoint; None if the file is unreadable."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as stream:
            return int(json.loads((stream.metadata() or {})[METADATA_KEY])["epoch"])
    except (SafetensorError, OSError, ValueError, KeyError):
        return None


# -- nested state dicts <-> JSON + named tensors ---------------------------------------------------
def encode(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON for a nested state dict: tensors move into `tensors` under their path, int keys survive."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().contiguous()
        return {"tensor": prefix}
    if isinstance(value, dict):
        return {"items": [[key, encode(item, f"{prefix}.{key}", tensors)] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        encoded = [encode(item, f"{prefix}.{index}", tensors) for index, item in enumerate(value)]
        return {"tuple": encoded} if isinstance(value, tuple) else encoded
    return value


def decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `encode`."""
    if isinstance(value, list):
        return [decode(item, tensors) for item in value]
    if isinstance(value, dict) and "tensor" in value:
        return tensors[value["tensor"]]
    if isinstance(value, dict) and "items" in value:
        return {key: decode(item, tensors) for key, item in value["items"]}
    if isinstance(value, dict) and "tuple" in value:
        return tuple(decode(item, tensors) for item in value["tuple"])
    return value


# -- random states ----------------------------------------------------------------------------------
def random_states(tensors: dict[str, torch.Tensor], generator: Optional[torch.Generator]) -> dict[str, Any]:
    """python, numpy, torch (CPU and CUDA) and the batch order's generator: all that makes the next epoch."""
    kind, keys, position, has_gauss, cached_gauss = numpy.random.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(numpy.int64))
    states: dict[str, Any] = {
        "python": encode(random.getstate(), "rng.python", tensors),
        "numpy": [kind, position, has_gauss, cached_gauss],
        "cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    for index in range(states["cuda"]):
        tensors[f"rng.cuda.{index}"] = torch.cuda.get_rng_state(index)
    if generator is not None:
        tensors["rng.sampler"] = generator.get_state()
    return states


def set_random_states(states: dict[str, Any], tensors: dict[str, torch.Tensor], generator: Optional[torch.Generator]) -> None:
    random.setstate(decode(states["python"], tensors))
    kind, position, has_gauss, cached_gauss = states["numpy"]
    numpy.random.set_state((kind, tensors["rng.numpy"].numpy().astype(numpy.uint32), position, has_gauss, cached_gauss))
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available() and states["cuda"] == torch.cuda.device_count():
        for index in range(states["cuda"]):
            torch.cuda.set_rng_state(tensors[f"rng.cuda.{index}"], index)
    if generator is not None and "rng.sampler" in tensors:
        generator.set_state(tensors["rng.sampler"])


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {name[len(prefix):]: value for name, value in tensors.items() if name.startswith(prefix)}


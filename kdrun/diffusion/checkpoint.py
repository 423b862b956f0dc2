"""Mid-phase checkpoints of `kdrun diffusion`, so an interrupted run continues where it stopped.

One safetensors file per phase in progress, `<run_dir>/checkpoints/<phase>.safetensors`, rewritten
atomically at a loss read-out once `trainer.checkpoint_seconds` have passed: weights, EMA weights,
optimiser state, step, loss sums and every random state (kdrun.training.checkpoint's encoding). A
finished phase needs none: the teacher is in the model cache, each round's student in students/.
The run's config is kept beside them; a resume with another config is refused.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from kdrun.diffusion.training import PhaseState
from kdrun.errors import ConfigError, RunError
from kdrun.files import write_bytes_atomic, write_json_atomic
from kdrun.training.checkpoint import METADATA_KEY, decode, encode, random_states, read_checkpoint, set_random_states

log = logging.getLogger("kdrun")

CONFIG_FILE = "config.json"


class PhaseCheckpoints:
    """The run's checkpoints/ folder."""

    def __init__(self, directory: Path, config: dict[str, Any], resume: bool, interval_seconds: float) -> None:
        self.directory = directory
        self.config = config
        self.resume = resume
        self.interval_seconds = interval_seconds
        self.last_written: dict[str, float] = {}

    def check_config(self) -> None:
        """On resume: the config must be the one the run started with. Otherwise record it."""
        path = self.directory / CONFIG_FILE
        if self.resume and path.is_file():
            saved = json.loads(path.read_text())
            for key in sorted(set(saved) | set(self.config)):
                if saved.get(key) != self.config.get(key):
                    raise ConfigError(
                        f"resume with a different config: the run has {key}={saved.get(key)!r}, now {self.config.get(key)!r}",
                        "resume with the original overrides (`kdrun resume DIR` reuses them)",
                    )
        elif not path.is_file():
            write_json_atomic(path, self.config)

    def restore(self, phase: str, state: PhaseState) -> bool:
        """Put a saved phase back into `state` (in place); False when there is nothing to resume."""
        path = self.directory / f"{phase}.safetensors"
        self.last_written[phase] = time.perf_counter()
        if not self.resume or not path.is_file():
            return False
        tensors, meta = read_checkpoint(path)
        try:
            state.model.load_state_dict(_prefixed(tensors, "model."))
            if state.ema is not None:
                state.ema.load_state_dict(_prefixed(tensors, "ema."))
            state.optimizer.load_state_dict(decode(meta["optimizer"], tensors))
        except (RuntimeError, KeyError, ValueError) as error:
            raise RunError(f"checkpoint {path} does not fit the configured phase ({' '.join(str(error).split())[:200]})",
                           "delete it to retrain the phase, or resume with the original config") from None
        set_random_states(meta["rng"], tensors, state.generator)
        state.step, state.seconds_before = int(meta["step"]), float(meta["seconds"])
        state.loss_sums, state.tail_sums = dict(meta["loss_sums"]), dict(meta["tail_sums"])
        return True

    def save(self, phase: str, state: PhaseState, last: bool) -> None:
        """Write the phase's state if one is due; the last step needs none (the caller keeps the result)."""
        if last or time.perf_counter() - self.last_written.get(phase, 0.0) < self.interval_seconds:
            return
        from safetensors.torch import save

        tensors = {f"model.{name}": value.detach().cpu().contiguous() for name, value in state.model.state_dict().items()}
        if state.ema is not None:
            tensors.update({f"ema.{name}": value.detach().cpu().contiguous() for name, value in state.ema.state_dict().items()})
        meta = {
            "phase": phase, "step": state.step, "seconds": state.seconds(), "loss_sums": state.loss_sums,
            "tail_sums": state.tail_sums, "optimizer": encode(state.optimizer.state_dict(), "optimizer", tensors),
            "rng": random_states(tensors, state.generator),
        }
        write_bytes_atomic(self.directory / f"{phase}.safetensors", save(tensors, metadata={METADATA_KEY: json.dumps(meta)}))
        self.last_written[phase] = time.perf_counter()

    def discard(self, phase: str) -> None:
        (self.directory / f"{phase}.safetensors").unlink(missing_ok=True)

    def remove_all(self) -> None:
        """A completed run is not resumed: free the disk."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _prefixed(tensors: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {name[len(prefix):]: value for name, value in tensors.items() if name.startswith(prefix)}

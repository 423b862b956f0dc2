"""Continuing a run in its own directory (`resume=true`, `kdrun resume DIR`).

Before anything trains, the run dir is made consistent with its checkpoints: the config must be
the one the run started with, and metrics.jsonl keeps only the epochs a checkpoint holds (a kill
between writing an epoch's line and its checkpoint would otherwise repeat that line). Phases whose
checkpoints are complete are not retrained: teachers and independent students come back from the
model cache, a phase's own checkpoint restores the rest.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from kdrun.errors import ConfigError
from kdrun.files import remove, write_bytes_atomic
from kdrun.results import SUMMARY_FILE, PhaseSummary, read_summary
from kdrun.training.checkpoint import CONFIG_FILE, CheckpointStore, checkpoint_epoch

log = logging.getLogger("kdrun")

CHECKPOINTS = "checkpoints"


def checkpoint_store(run_dir: Path, config: dict[str, Any], resume: bool, interval_seconds: float) -> CheckpointStore:
    """The run's checkpoints; `config` is the flat config a later resume must match."""
    return CheckpointStore(run_dir / CHECKPOINTS, config, resume, float(interval_seconds))


def prepare_resume(run_dir: Path, config: dict[str, Any]) -> None:
    """Check that `run_dir` holds an unfinished run of `config`; cut metrics.jsonl back to its checkpoints.

    Raises:
        ConfigError: the run already completed, there is no earlier run, or the config differs.
    """
    summary = run_dir / SUMMARY_FILE
    if summary.is_file() and read_summary(summary).status == "completed":
        raise ConfigError(f"the run in {run_dir} already completed", "nothing to resume; start a new run in another hydra.run.dir")
    directory = run_dir / CHECKPOINTS
    saved_config = directory / CONFIG_FILE
    if saved_config.is_file():
        _check_same_config(json.loads(saved_config.read_text()), config, run_dir)
    elif not _earlier_run_logged(run_dir):
        raise ConfigError(f"nothing to resume in {run_dir}: no earlier run there",
                          "pass the dir of an interrupted run: kdrun resume DIR, or hydra.run.dir=DIR resume=true")
    else:
        log.info("resume: no checkpoint in %s yet, starting from the beginning", run_dir)
    epochs = _checkpointed_epochs(directory)
    _truncate_metrics(run_dir / "metrics.jsonl", epochs)
    remove(summary)  # summary.json appears again when this attempt ends
    log.info("resume: %s", ", ".join(f"{phase} after epoch {epoch}" for phase, epoch in epochs.items()) or "from the start")


def mark_trained_here(phases: dict[str, PhaseSummary], run_dir: Path) -> None:
    """A phase this run dir trained (it has a checkpoint) but a resume loaded from the cache is still 'trained'."""
    for name, phase in phases.items():
        if phase.source == "cache" and (run_dir / CHECKPOINTS / f"{name}.safetensors").is_file():
            phase.source = "trained"


def remove_checkpoints(run_dir: Path) -> None:
    """A completed run cannot be resumed: free the disk its checkpoints take (several model copies each)."""
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)


def _check_same_config(saved: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            raise ConfigError(
                f"resume with a different config: the run in {run_dir} has {key}={saved.get(key)!r}, now {current.get(key)!r}",
                "resume with the original overrides (`kdrun resume DIR` reuses them)",
            )


def _checkpointed_epochs(directory: Path) -> dict[str, int]:
    """phase -> last checkpointed epoch; an unreadable checkpoint is removed (that phase starts over)."""
    epochs: dict[str, int] = {}
    for path in sorted(directory.glob("*.safetensors")):
        epoch = checkpoint_epoch(path)
        if epoch is None:
            log.warning("resume: checkpoint %s is unreadable; %s starts over", path, path.stem)
            remove(path)
            continue
        epochs[path.stem] = epoch
    return epochs


def _truncate_metrics(path: Path, epochs: dict[str, int]) -> None:
    """Keep only the lines of epochs that a checkpoint holds; the rest are trained (and written) again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if record.get("epoch", 0) <= epochs.get(record.get("phase"), 0):
            kept.append(line + "\n")
    write_bytes_atomic(path, "".join(kept).encode())


def _earlier_run_logged(run_dir: Path) -> bool:
    log_file = run_dir / "train.log"
    return (log_file.is_file() and log_file.stat().st_size > 0) or (run_dir / "metrics.jsonl").is_file()


"""`kdrun train` under torchrun: one run dir for all ranks; ranks other than 0 train silently.

Every rank composes its own config, so `${now:...}` in hydra.run.dir can differ by a second between
ranks. Rank 0's directory is the run's: it is broadcast to the others (which were told not to write
Hydra's .hydra/ folder, see `hydra_overrides`) and an empty directory Hydra created for another rank
under another timestamp is removed. Only rank 0 writes (kdrun/files.py) and prints; the other ranks
report only their own errors, prefixed by their rank. The process group itself: kdrun/parallel.py.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

from kdrun import parallel
from kdrun.errors import ConfigError, KdrunError, RunError, tracebacks_requested


class RankFailed(KdrunError):
    """A rank other than 0 failed: its error, prefixed by the rank (the exit code is the error's)."""

    def __init__(self, topology: parallel.Topology, error: KdrunError) -> None:
        super().__init__(f"rank {topology.rank} of {topology.world_size}: {error.one_line()}")
        self.exit_code = error.exit_code


@contextlib.contextmanager
def torchrun_session() -> Iterator[None]:
    """The process group around the whole command; a collective that fails becomes a RunError.

    When a rank dies, the others fail inside their next collective (gloo: "Connection closed by
    peer") with a RuntimeError, unless torchrun stops them first. Either way the run has no
    summary.json; the dead rank printed its own `kdrun: error:` line.
    """
    with parallel.session() as topology:
        try:
            yield
        except RuntimeError as error:
            if topology.world_size == 1 or tracebacks_requested():
                raise
            first_line = " ".join(str(error).split())[:300]
            raise RunError(f"rank {topology.rank} of {topology.world_size} stopped: a collective operation failed ({first_line})",
                           "another rank probably failed first: see its error above") from None


def hydra_overrides() -> list[str]:
    """Extra overrides for this process: ranks other than 0 write no .hydra/ folder."""
    return ["hydra.output_subdir=null"] if parallel.environment_rank() != 0 else []


def agree_on_run_dir(own_dir: Path, multirun: bool) -> Path:
    """Rank 0's run dir, on every rank.

    Raises:
        ConfigError: for a sweep (-m), which torchrun does not run.
    """
    if multirun:
        raise ConfigError("torchrun runs one `kdrun train`, not a sweep (-m)", "drop -m, or sweep with hydra/launcher=kdrun_slurm")
    chosen = Path(parallel.broadcast_object(str(own_dir)))
    if chosen != own_dir and own_dir.is_dir() and not any(own_dir.iterdir()):
        own_dir.rmdir()  # Hydra made it for this rank's own timestamp; empty, since this rank writes nothing
    return chosen


class SilentObserver:
    """Progress events of a rank other than 0: nobody listens."""

    def phase_started(self, phase: str, epochs: int, steps_per_epoch: int) -> None:
        pass

    def step_done(self, phase: str) -> None:
        pass

    def epoch_done(self, record: Any) -> None:
        pass

    def phase_done(self, phase: str) -> None:
        pass


def run_other_rank(cfg: Any, run_dir: Path) -> float:
    """The same run as rank 0 (same data, seeds and collectives), without files or console output.

    Raises:
        RankFailed: any KdrunError of this rank, with the rank in its message.
    """
    from kdrun.results import RunProgress
    from kdrun.training.device import configure_threads
    from kdrun.training.from_config import settings_from_config
    from kdrun.training.pipeline import run_pipeline

    logger = logging.getLogger("kdrun")
    logger.handlers = [logging.NullHandler()]
    logger.propagate = False
    progress = RunProgress()
    try:
        settings = settings_from_config(cfg)
        configure_threads(settings.trainer.threads, 1)  # as rank 0 does
        run_pipeline(settings, run_dir, SilentObserver(), progress)
    except KdrunError as error:
        if tracebacks_requested():
            raise
        raise RankFailed(parallel.topology(), error) from None
    distilled = progress.phases.get("distilled")
    return float(distilled.best_val_acc) if distilled is not None else float("nan")

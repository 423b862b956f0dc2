"""`kdrun train` under torchrun: one run dir for all ranks; ranks other than 0 train silently.

Every rank composes its own config, so `${now:...}` in hydra.run.dir can differ by a second between
ranks. Rank 0's directory is the run's: it is broadcast to the others (which were told not to write
Hydra's .hydra/ folder, see `hydra_overrides`) and an empty directory Hydra created for another rank
under another timestamp is removed. Only rank 0 writes (train.log, metrics.jsonl, weights, cache
entries, summary.json) and prints; the other ranks print only their own errors, prefixed by rank.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

from kdrun.cli import fail, full_errors_requested
from kdrun.errors import KdrunError
from kdrun.training import distributed


@contextlib.contextmanager
def session() -> Iterator[None]:
    """The process group around the whole command; a collective that fails becomes one error line.

    When a rank dies, the others fail inside their next collective (gloo: "Connection closed by
    peer") with a RuntimeError, unless torchrun stops them first. Either way the run has no
    summary.json; the dead rank printed its own `kdrun: error:` line.
    """
    with distributed.session() as topology:
        try:
            yield
        except RuntimeError as error:
            if topology.world_size == 1 or full_errors_requested():
                raise
            first_line = " ".join(str(error).split())[:300]
            fail(f"rank {topology.rank} of {topology.world_size} stopped: a collective operation failed ({first_line}) "
                 "(another rank probably failed first: see its error above)", 1)


def hydra_overrides() -> list[str]:
    """Extra overrides for this process: ranks other than 0 write no .hydra/ folder."""
    return ["hydra.output_subdir=null"] if distributed.environment_rank() != 0 else []


def agree_on_run_dir(own_dir: Path, multirun: bool) -> Path:
    """Rank 0's run dir, on every rank."""
    if multirun:
        fail("torchrun runs one `kdrun train`, not a sweep (-m) (drop -m, or sweep with hydra/launcher=kdrun_slurm)", 2)
    chosen = Path(distributed.broadcast_object(str(own_dir)))
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
    """The same run as rank 0 (same data, seeds and collectives), without files or console output."""
    from kdrun.config import validate
    from kdrun.training.device import configure_threads
    from kdrun.training.pipeline import Run

    logger = logging.getLogger("kdrun")
    logger.handlers = [logging.NullHandler()]
    logger.propagate = False
    topology = distributed.topology()
    try:
        validate(cfg)
        configure_threads(cfg.trainer.threads, 1)  # as rank 0 does
        run = Run(cfg, run_dir, SilentObserver())
        run.execute()
    except KdrunError as error:
        if full_errors_requested():
            raise
        fail(f"rank {topology.rank} of {topology.world_size}: {error.one_line()}", error.exit_code)
    return float(run.phases.get("distilled", {}).get("best_val_acc", float("nan")))

"""`hydra/sweeper=kdrun_basic` (kdrun's default): Hydra's basic sweeper, composing each job once.

Hydra accepts sweeper classes only from the `hydra_plugins` package, so the class lives here and is
thin; the loader that keeps the validated configs is kdrun's (kdrun/commands/sweep_compose.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class KdrunBasicSweeper(BasicSweeper):
    """The basic sweeper (same grid, batches and early errors) whose launcher reuses the validation's configs."""

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from kdrun.commands.sweep_compose import ComposeOnce

        context = dataclasses.replace(hydra_context, config_loader=ComposeOnce(hydra_context.config_loader))
        super().setup(hydra_context=context, task_function=task_function, config=config)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Compose (and keep) every job; a job that cannot be composed ends the sweep before any job ran,
        leaving no sweep dir behind when it held only the multirun.yaml the sweep just wrote."""
        from pathlib import Path

        from kdrun.run_dir import discard_unstarted_sweep

        try:
            for overrides in batch:
                self.hydra_context.config_loader.keep(self.config, overrides)
        except Exception:
            discard_unstarted_sweep(Path(str(self.config.hydra.sweep.dir)))
            raise

"""`hydra/launcher=kdrun_stacked`: a sweep's distilled students trained together, stacked in one pass.

Hydra accepts launcher classes only from the `hydra_plugins` package, so the class lives here and is
thin; what it does is kdrun's (kdrun/commands/stacked_launch.py, docs/stacked.md). Configured by
conf/hydra/launcher/kdrun_stacked.yaml.
"""

from __future__ import annotations

from typing import Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn


class KdrunStackedLauncher(BasicLauncher):
    """The basic launcher (jobs one after another, in this process), with the stackable jobs planned first."""

    def __init__(self, max_stack: int = 64, min_stack: int = 2) -> None:
        super().__init__()
        self.max_stack = int(max_stack)
        self.min_stack = int(min_stack)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from kdrun.commands.stacked_launch import launch_stacked

        return launch_stacked(self, job_overrides, initial_job_idx)

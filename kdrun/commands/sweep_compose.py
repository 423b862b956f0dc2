"""Compose each job of a sweep once, not twice.

Hydra's basic sweeper composes every job's config to validate the batch before launching it (so a bad
override fails before any job runs), then the launcher composes every job again to run it. A compose of
kdrun's config takes about 0.2 s on 2 CPU cores (docs/stacked.md), paid twice per job. kdrun's sweeper
(hydra/sweeper=kdrun_basic, the default) validates through `ComposeOnce.keep`, and the launcher's request
for the same job gets that config, each once. Behaviour is unchanged: the same configs, the same early
errors; launchers that compose in other processes (joblib, submitit) get a loader without the kept
configs (pickling drops them) and compose as before.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from hydra.core.config_loader import ConfigLoader
from hydra.core.object_type import ObjectType


class ComposeOnce(ConfigLoader):
    """A ConfigLoader that hands a validated sweep job's config to the launcher instead of composing it again."""

    def __init__(self, loader: ConfigLoader) -> None:
        self.loader = loader
        self.kept: dict[tuple[int, tuple[str, ...]], list] = {}

    def keep(self, master_config: Any, sweep_overrides: Sequence[str]) -> None:
        """Compose a job's config (raising what composing raises) and keep it for the launcher's request."""
        config = self.loader.load_sweep_config(master_config, list(sweep_overrides))
        self.kept.setdefault((id(master_config), tuple(sweep_overrides)), []).append(config)

    def load_sweep_config(self, master_config: Any, sweep_overrides: list[str]) -> Any:
        """A kept config for these overrides, each handed out once (two equal jobs get two configs), else a new one."""
        kept = self.kept.get((id(master_config), tuple(sweep_overrides)))
        return kept.pop(0) if kept else self.loader.load_sweep_config(master_config, list(sweep_overrides))

    def __getstate__(self) -> dict:
        return {"loader": self.loader, "kept": {}}  # kept configs are keyed by this process's objects

    def load_configuration(self, config_name: Optional[str], overrides: list[str], run_mode: Any,
                           from_shell: bool = True, validate_sweep_overrides: bool = True) -> Any:
        return self.loader.load_configuration(config_name, overrides, run_mode, from_shell, validate_sweep_overrides)

    def get_search_path(self) -> Any:
        return self.loader.get_search_path()

    def get_sources(self) -> list:
        return self.loader.get_sources()

    def list_groups(self, parent_name: str) -> list[str]:
        return self.loader.list_groups(parent_name)

    def get_group_options(self, group_name: str, results_filter: Optional[ObjectType] = ObjectType.CONFIG, config_name: Optional[str] = None,
                          overrides: Optional[list[str]] = None) -> list[str]:
        return self.loader.get_group_options(group_name, results_filter, config_name, overrides)

    def compute_defaults_list(self, config_name: Optional[str], overrides: list[str], run_mode: Any) -> Any:
        return self.loader.compute_defaults_list(config_name, overrides, run_mode)

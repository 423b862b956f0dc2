"""What `hydra/launcher=kdrun_stacked` does with a sweep: compose every job, group, then run the jobs.

1. Every job's config is composed (as Hydra's basic launcher composes it) and turned into settings;
2. jobs that differ only in the distilled phase's loss (kdrun/training/stacked/grouping.py) form a
   stack, registered in kdrun/training/stacked/plan.py; the log says which jobs stack and why the
   others train alone;
3. the jobs run one after another through the normal run path (`kdrun train`'s task): the teacher and
   the independent student come from the cache as in any sweep, and the first job of a stack to reach
   distillation trains the stack's students together; every job replays its own part.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

from kdrun.errors import ConfigError, KdrunError
from kdrun.run_dir import discard_unstarted_sweep

log = logging.getLogger("kdrun.stacked")


def launch_stacked(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    """Hydra's Launcher.launch for the stacked launcher; returns one JobReturn per job, in order."""
    from hydra.core.utils import configure_log, filter_overrides, run_job, setup_globals
    from omegaconf import open_dict

    from kdrun.training.stacked.grouping import plan_groups
    from kdrun.training.stacked.plan import planned

    if launcher.max_stack < 1 or launcher.min_stack < 1:
        discard_unstarted_sweep(Path(str(launcher.config.hydra.sweep.dir)))  # bad input: leave nothing behind
        raise ConfigError(f"hydra.launcher.max_stack={launcher.max_stack} and min_stack={launcher.min_stack} must be >= 1",
                          "e.g. hydra.launcher.max_stack=64 hydra.launcher.min_stack=2")
    setup_globals()
    config, context = launcher.config, launcher.hydra_context
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    configs = []
    for number, overrides in enumerate(job_overrides, start=initial_job_idx):
        sweep_config = context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = number
            sweep_config.hydra.job.num = number
        configs.append((number, overrides, sweep_config))
    jobs = [job_settings(sweep_config) for _, _, sweep_config in configs]
    groups = plan_groups(jobs, launcher.max_stack, first=initial_job_idx, min_stack=launcher.min_stack)
    log.info("Launching %d jobs locally, stacked: %s", len(configs), describe(groups, initial_job_idx))
    runs = []
    with planned([[jobs[index] for index in group.jobs] for group in groups]):
        for number, overrides, sweep_config in configs:
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
            runs.append(run_job(hydra_context=context, task_function=launcher.task_function, config=sweep_config,
                                job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
            configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    return runs


def job_settings(sweep_config: Any) -> Optional[Any]:
    """The settings the job's run will read (its task gets the config without `hydra`); None if they fail a check.

    A job whose config fails trains alone and fails in its own run dir with its own one-line error.
    """
    from omegaconf import open_dict

    from kdrun.training.from_config import settings_from_config

    task_config = copy.deepcopy(sweep_config)
    with open_dict(task_config):
        del task_config["hydra"]
    try:
        return settings_from_config(task_config)
    except (KdrunError, ValueError, TypeError):  # OmegaConf's resolution errors are ValueErrors
        return None


def describe(groups: list, first: int) -> str:
    """'#0-#8 (9 students); #9 alone (method fitnets does not stack ...)'."""
    parts = []
    for group in groups:
        numbers = [first + index for index in group.jobs]
        if len(numbers) == 1:
            parts.append(f"#{numbers[0]} alone ({group.reason})")
        else:
            parts.append(f"{' '.join(f'#{number}' for number in numbers)} together ({len(numbers)} students)")
    return "; ".join(parts)

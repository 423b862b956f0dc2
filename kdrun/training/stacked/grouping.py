"""Which jobs of a sweep can train their distilled students together (`hydra/launcher=kdrun_stacked`).

Jobs stack when their resolved configs differ ONLY in keys of the distilled phase's loss, the
allow-list below: the temperature, alpha and a logit method's term weights and temperature schedule.
Everything else (dataset, teacher, student architecture, budget, batch size, optimizer and lr, seed,
trainer switches) must be equal, because it changes the shared teacher, the data, the batch order or
the code every member runs. Note that `seed` and `lr` are NOT student-only here: the seed also draws
the validation split and the teacher's initialisation, and `lr` is also the teacher's learning rate,
so jobs that differ in them have different teachers (each such set of jobs is stacked on its own).
Jobs that cannot stack at all train alone through the normal path, and `reason` says why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional, Sequence

from kdrun import parallel
from kdrun.training.settings import RunSettings

# logit methods whose losses take stacked members (`stacks_members`), with the options of theirs that may
# differ per member (they enter only the term weights: DKD's tckd = alpha * dkd_alpha, nckd = alpha * beta)
STACKED_METHODS: dict[str, tuple[str, ...]] = {"weighted": (), "basic": (), "hard": (), "dkd": ("method.dkd_alpha", "method.beta")}
STUDENT_KEYS = ("alpha", "T", "method.weights", "method.schedule")  # the latter two: a member's term weights and T schedule


@dataclass
class Group:
    """Jobs (indices into the sweep) trained together; a group of one says why it trains alone."""

    jobs: list[int] = field(default_factory=list)
    reason: Optional[str] = None  # set for groups of one


def stackable_key(key: str, method: str = "") -> bool:
    """A flat config key (`method.weights.kd`) that stacked members of `method` may differ in."""
    keys = (*STUDENT_KEYS, *STACKED_METHODS.get(method, ()))
    return key in keys or key.startswith(tuple(f"{name}." for name in keys))


def why_alone(settings: RunSettings) -> Optional[str]:
    """Why this job cannot be stacked with any other, or None when it can."""
    if settings.method_name not in STACKED_METHODS:
        return f"method {settings.method_name} does not stack (only {', '.join(STACKED_METHODS)} do)"
    if settings.compression.stages:
        return "compression stages fine-tune the distilled student"
    if settings.trainer.compile:
        return "trainer.compile=true"
    if settings.resume:
        return "resume=true"
    if parallel.is_active():
        return "under torchrun every job is trained by all ranks (DDP), which the stack does not do"
    if settings.student_epochs < 1:
        return "student_epochs=0"
    return None


def shared_part(settings: RunSettings) -> str:
    """The config without the allow-listed keys: jobs with the same shared part can stack."""
    shared = {key: value for key, value in settings.recorded_config.items() if not stackable_key(key, settings.method_name)}
    return json.dumps(shared, sort_keys=True, default=str)


def plan_groups(jobs: Sequence[Optional[RunSettings]], max_stack: int, first: int = 0, min_stack: int = 2) -> list[Group]:
    """Groups of jobs (positions in `jobs`) in sweep order; None (a config that fails its checks) trains alone and fails there.

    `first` is the first job's number in the sweep, for the reasons' wording. Groups smaller than
    `min_stack` train alone (`hydra.launcher.min_stack`, default 2: a stack has a fixed cost per step,
    and on a CPU two tiny students stacked already beat two solo runs, docs/stacked.md).
    """
    groups: dict[str, Group] = {}
    alone: list[Group] = []
    for index, settings in enumerate(jobs):
        reason = "its config fails its checks" if settings is None else why_alone(settings)
        if reason is not None:
            alone.append(Group([index], reason))
            continue
        groups.setdefault(shared_part(settings), Group()).jobs.append(index)
    planned = list(alone)
    for group in groups.values():
        for start in range(0, len(group.jobs), max_stack):
            jobs_of_stack = group.jobs[start : start + max_stack]
            if 1 < len(jobs_of_stack) < min_stack:
                reason = f"a stack of {len(jobs_of_stack)} is below hydra.launcher.min_stack={min_stack}"
                planned.extend(Group([index], reason) for index in jobs_of_stack)
            else:
                planned.append(Group(jobs_of_stack))
    for group in planned:
        if len(group.jobs) == 1 and group.reason is None:
            group.reason = "no other job differs from it only in " + ", ".join(STUDENT_KEYS)
            group.reason += differing_keys(jobs, group.jobs[0], first)
    return sorted(planned, key=lambda group: group.jobs[0])


def differing_keys(jobs: Sequence[Optional[RunSettings]], index: int, first: int = 0) -> str:
    """' (differs from job #j in a, b)': the closest stackable job's other keys, to say what to change."""
    own = jobs[index].recorded_config
    best: Optional[tuple[int, list[str]]] = None
    for other_index, other in enumerate(jobs):
        if other is None or other_index == index or why_alone(other) is not None:
            continue
        keys = sorted(key for key in own.keys() | other.recorded_config.keys()
                      if not stackable_key(key, jobs[index].method_name) and own.get(key) != other.recorded_config.get(key))
        if best is None or len(keys) < len(best[1]):
            best = other_index, keys
    return f" (differs from job #{first + best[0]} in {', '.join(best[1][:4])})" if best else ""

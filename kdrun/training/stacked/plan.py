"""This process's stacking plan: which runs train their distilled student in which stack.

The stacked launcher (hydra_plugins/kdrun_stacked_launcher) groups a sweep's jobs (grouping.py)
and registers each group's settings here before it runs the jobs one by one through the normal run
path. The first member whose pipeline reaches the distilled phase trains the whole stack; every
member (that one included) then takes its own outcome from here (kdrun/training/stacked/distill.py).
Plain process state, because the launcher and the runs share the process, as Hydra's basic launcher does.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Iterator, Optional

from kdrun.training.settings import RunSettings
from kdrun.training.stacked.loop import MemberOutcome

_STACKS: dict[str, "Stack"] = {}  # a member's key -> its stack


@dataclass
class Stack:
    """The jobs of one group, and what their stacked training gave each of them."""

    members: list[RunSettings]
    outcomes: dict[str, MemberOutcome] = field(default_factory=dict)  # by member_key
    fallback: Optional[str] = None  # why the stack's jobs train alone after all (the stacked pass failed)

    def pending(self) -> list[RunSettings]:
        """Members without an outcome yet (a member whose run failed before distillation has none)."""
        return [settings for settings in self.members if member_key(settings) not in self.outcomes]


def member_key(settings: RunSettings) -> str:
    """A run's identity in the plan: its resolved config (what a launcher composed is what its run reads)."""
    return json.dumps(settings.recorded_config, sort_keys=True, default=str)


@contextlib.contextmanager
def planned(groups: list[list[RunSettings]]) -> Iterator[list[Stack]]:
    """Register the stacks of a sweep (groups of two or more) while its jobs run; forgotten afterwards."""
    stacks = [Stack(members) for members in groups if len(members) > 1]
    for stack in stacks:
        for settings in stack.members:
            _STACKS[member_key(settings)] = stack
    try:
        yield stacks
    finally:
        for stack in stacks:
            for settings in stack.members:
                _STACKS.pop(member_key(settings), None)


def stack_of(settings: RunSettings) -> Optional[Stack]:
    return _STACKS.get(member_key(settings))

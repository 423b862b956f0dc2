"""The one writer of a diffusion run's metrics.jsonl: a line per trained phase and per evaluation.

Each line is appended and synced as soon as its piece of work is done, so on resume the file says
what is done: the run reads it back, drops a line a kill cut short, and skips finished evaluations.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

from kdrun.diffusion_results import Evaluation, PhaseRecord
from kdrun.files import write_bytes_atomic

Event = Union[Evaluation, PhaseRecord]


class EventLog:
    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.evaluations: dict[tuple[str, int], Evaluation] = {}
        self.phases: dict[tuple[str, int], PhaseRecord] = {}
        if resume and path.is_file():
            self._read_back()

    def _read_back(self) -> None:
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                data = json.loads(line)
                self._remember(Evaluation(**data) if data.get("phase") == "evaluation" else PhaseRecord(**data))
            except (ValueError, TypeError):  # cut short by a kill, or not ours
                continue
            kept.append(line + "\n")
        write_bytes_atomic(self.path, "".join(kept).encode())

    def _remember(self, event: Event) -> None:
        if isinstance(event, Evaluation):
            self.evaluations[(event.sampler, event.steps)] = event
        else:
            self.phases[(event.phase, event.round)] = event

    def evaluated(self, sampler: str, steps: int) -> bool:
        return (sampler, steps) in self.evaluations

    def record_once(self, event: Event) -> None:
        """Append `event` unless an equal-keyed line is already there (a resumed run)."""
        key = (event.sampler, event.steps) if isinstance(event, Evaluation) else (event.phase, event.round)
        if key in (self.evaluations if isinstance(event, Evaluation) else self.phases):
            return
        self._remember(event)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(event.to_dict()) + "\n")
            stream.flush()
            os.fsync(stream.fileno())

    def rounds(self) -> list[PhaseRecord]:
        return sorted(self.phases.values(), key=lambda record: record.round)

    def all_evaluations(self) -> list[Evaluation]:
        return list(self.evaluations.values())

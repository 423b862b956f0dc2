"""Weights & Biases: `track=[wandb]`, offline by default (`wandb sync <run>/wandb/offline-run-*` uploads later).

A sweep is one W&B group (the experiment name) with a run per job, in `tracking.wandb.project`. Each
phase gets its own step axis (`<phase>/epoch`), so the teacher's and the students' curves restart at
epoch 1 side by side instead of queueing on W&B's single global step. Console capture and system
metrics are off: kdrun writes train.log itself and a tracker must not slow the training it watches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdrun.errors import ConfigError
from kdrun.results import RunSummary
from kdrun.tracking.base import STATUS, TRACKERS, TrackedRun, Tracker, require, run_files, summary_metrics

MODES = ("offline", "online", "disabled")


@TRACKERS.register("wandb")
class WandbLog(Tracker):
    backend = "wandb"

    def __init__(self, run: TrackedRun) -> None:
        super().__init__(run)
        require("wandb")
        self.mode = str(run.options.get("mode") or "offline")
        if self.mode not in MODES:
            raise ConfigError(f"tracking.wandb.mode={self.mode} is unknown", f"choose one of: {', '.join(MODES)}")
        self.handle: Any = None

    def start(self) -> str:
        import wandb

        options = self.run.options
        directory = Path(str(options.get("dir"))).expanduser().resolve() if options.get("dir") else self.run.run_dir
        directory.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(console="off", x_disable_stats=True, disable_git=True, silent=True)
        self.handle = wandb.init(
            project=str(options.get("project") or "kdrun"), entity=options.get("entity"), group=self.run.experiment,
            name=self.run.name, dir=str(directory), mode=self.mode, config=self.run.params, settings=settings,
            reinit="create_new", id=self.run.resume_id, resume="allow" if self.run.resume_id else None,
        )
        return str(self.handle.id)

    def define_phase(self, phase: str) -> None:
        self.handle.define_metric(f"{phase}/epoch")
        self.handle.define_metric(f"{phase}/*", step_metric=f"{phase}/epoch")

    def log_epoch(self, phase: str, epoch: int, metrics: dict[str, float]) -> None:
        self.handle.log({f"{phase}/epoch": epoch, **metrics})

    def finish_run(self, summary: RunSummary) -> None:
        import wandb

        self.handle.summary.update({**summary_metrics(summary), "status": summary.status, "error": summary.error or ""})
        files, folders = run_files(self.run.run_dir)
        artifact = wandb.Artifact(name=f"kdrun-{self.handle.id}", type="kdrun-run", metadata={"run_dir": str(self.run.run_dir)})
        for path in files:
            artifact.add_file(str(path))
        for folder in folders:  # file by file: add_dir prints a line per folder whatever the settings
            for path in sorted(item for item in folder.rglob("*") if item.is_file()):
                artifact.add_file(str(path), name=str(path.relative_to(self.run.run_dir)))
        self.handle.log_artifact(artifact)
        self.handle.finish(exit_code=STATUS.get(summary.status, 1))

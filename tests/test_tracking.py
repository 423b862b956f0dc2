"""Experiment tracking: MLflow (local file store) and Weights & Biases (offline), tested without a network."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from conftest import TINY, run_kdrun
from kdrun.results import EpochRecord, RunSummary
from kdrun.tracking import experiment_name, finish_trackers, open_trackers
from kdrun.tracking.base import TrackedRun, Tracker, epoch_metrics, flat_params, summary_metrics

RECORD = EpochRecord("distilled", 3, {"ce": 0.5, "kd": 0.25}, 0.8, 0.7, 0.001, 4.0, 100.0, 1.5)


def test_epoch_metrics_are_per_phase_series():
    assert epoch_metrics(RECORD) == {
        "distilled/loss/ce": 0.5, "distilled/loss/kd": 0.25, "distilled/train_acc": 0.8, "distilled/val_acc": 0.7,
        "distilled/lr": 0.001, "distilled/samples_per_s": 100.0, "distilled/seconds": 1.5, "distilled/T": 4.0}


def test_summary_metrics_take_every_number_and_stay_apart_from_the_series():
    summary = RunSummary.from_json({"status": "completed", "run_dir": "/r", "phases": {
        "teacher": {"source": "cache", "test_acc": 0.9, "test_acc_last": 0.9, "best_epoch": None, "best_val_acc": 0.8,
                    "params": 10, "seconds": 2.0},
        "independent": {"source": "trained", "test_acc": 0.7, "test_acc_last": 0.6, "best_epoch": 2, "best_val_acc": 0.7,
                        "params": 5, "seconds": 1.0},
        "distilled": {"source": "trained", "test_acc": 0.8, "test_acc_last": 0.8, "best_epoch": 3, "best_val_acc": 0.75,
                      "params": 5, "seconds": 1.0, "weights": "/x", "T": 4.0}},
        "export": {"distilled": {"onnx": {"max_abs_diff": 1e-6, "path": "/y", "format": "onnx", "error": None}}}})
    assert summary_metrics(summary) == {
        "summary/teacher/test_acc": 0.9, "summary/teacher/test_acc_last": 0.9, "summary/teacher/best_val_acc": 0.8,
        "summary/teacher/params": 10.0, "summary/teacher/seconds": 2.0,
        "summary/independent/test_acc": 0.7, "summary/independent/test_acc_last": 0.6, "summary/independent/best_epoch": 2.0,
        "summary/independent/best_val_acc": 0.7, "summary/independent/params": 5.0, "summary/independent/seconds": 1.0,
        "summary/distilled/test_acc": 0.8, "summary/distilled/test_acc_last": 0.8, "summary/distilled/best_epoch": 3.0,
        "summary/distilled/best_val_acc": 0.75, "summary/distilled/params": 5.0, "summary/distilled/seconds": 1.0,
        "summary/distilled/T": 4.0, "summary/export/distilled/onnx/max_abs_diff": 1e-6,
        "summary/gap_recovered": pytest.approx(0.5)}
    assert not set(summary_metrics(summary)) & set(epoch_metrics(RECORD))


def test_params_are_dotted_and_the_experiment_is_one_per_sweep():
    assert flat_params({"T": 4.0, "teacher": {"name": "mlp", "hidden": [3, 4]}, "scheduler": None, "compress": []}) == {
        "T": "4.0", "teacher.name": "mlp", "teacher.hidden": "[3, 4]", "scheduler": "None", "compress": "[]"}
    assert experiment_name(None, None) == "kdrun"
    assert experiment_name(None, Path("/x/outputs/multirun/2026-01-02/03-04-05")) == "kdrun/2026-01-02/03-04-05"
    assert experiment_name("mine", Path("/x/y/z")) == "mine"


def ended(status: str, run_dir: Path) -> RunSummary:
    return RunSummary(status, str(run_dir), 0, [], {})


class Recording(Tracker):
    backend = "recording"

    def __init__(self, run: TrackedRun, fail_on_epoch: bool = False) -> None:
        super().__init__(run)
        self.calls: list[str] = []
        self.fail_on_epoch = fail_on_epoch

    def start(self) -> str:
        self.calls.append("start")
        return "id-1"

    def log_epoch(self, phase: str, epoch: int, metrics: dict[str, float]) -> None:
        if self.fail_on_epoch:
            raise ConnectionError("tracking server went away")
        self.calls.append(f"epoch {phase} {epoch}")

    def finish_run(self, summary: RunSummary) -> None:
        self.calls.append(f"finish {summary.status}")


def test_a_tracker_starts_at_its_first_event_and_not_at_all_for_a_run_that_never_started(tmp_path):
    idle = Recording(TrackedRun(tmp_path, "kdrun", {}))
    idle.finish(None)
    assert idle.calls == [] and idle.run_id is None
    busy = Recording(TrackedRun(tmp_path, "kdrun", {}))
    busy.phase_started("distilled", 3, 10)
    busy.epoch_done(RECORD)
    busy.finish(ended("completed", tmp_path))
    assert busy.calls == ["start", "epoch distilled 3", "finish completed"] and busy.run_id == "id-1"


def test_a_failing_backend_is_switched_off_with_a_warning_and_the_run_goes_on(tmp_path, caplog):
    tracker = Recording(TrackedRun(tmp_path, "kdrun", {}), fail_on_epoch=True)
    tracker.epoch_done(RECORD)  # raises inside: must not reach the training loop
    tracker.epoch_done(RECORD)
    tracker.finish(ended("completed", tmp_path))
    assert tracker.calls == ["start"] and not tracker.enabled
    assert [record.getMessage() for record in caplog.records if record.levelname == "WARNING"] == [
        "recording: logging stopped (ConnectionError: tracking server went away); the run's own files are complete"]


def test_unknown_or_repeated_backends_are_config_errors(tmp_path):
    from kdrun.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown tracking backend 'neptune'"):
        open_trackers(["neptune"], {}, {}, tmp_path)
    with pytest.raises(ConfigError, match="lists a backend twice"):
        open_trackers(["mlflow", "mlflow"], {}, {}, tmp_path)
    with pytest.raises(ConfigError, match="tracking.wandb.mode=sometimes is unknown"):
        open_trackers(["wandb"], {"wandb": {"mode": "sometimes"}}, {}, tmp_path)


def test_resumed_run_continues_the_same_mlflow_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # kdrun sets it (setdefault) for a directory URI
    options = {"mlflow": {"uri": str(tmp_path / "mlruns")}}
    (first,) = open_trackers(["mlflow"], options, {"T": 4.0}, tmp_path / "run")
    first.epoch_done(RECORD)
    finish_trackers([first], ended("interrupted", tmp_path / "run"))
    (again,) = open_trackers(["mlflow"], options, {"T": 4.0}, tmp_path / "run", resume=True)
    again.epoch_done(EpochRecord("distilled", 4, {"ce": 0.4}, 0.9, 0.8, 0.001, 4.0, 100.0, 1.5))
    finish_trackers([again], ended("completed", tmp_path / "run"))
    assert again.run_id == first.run_id
    history = again.client.get_metric_history(first.run_id, "distilled/val_acc")
    assert [(item.step, item.value) for item in history] == [(3, 0.7), (4, 0.8)]
    assert again.client.get_run(first.run_id).info.status == "FINISHED"


# -- a sweep through the CLI: one experiment, one run per job, in both backends -----------------------
def wandb_records(run_file: Path) -> list:
    """The protobuf records of an offline W&B run file (a LevelDB-style log of 32 KiB blocks after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2

    data, position, chunks, pending = run_file.read_bytes(), 7, [], b""
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        if left < 7:  # block trailer
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        if kind in (1, 4):  # full record, or the last piece of one
            chunks.append(pending + chunk)
            pending = b""
        elif kind in (2, 3):
            pending += chunk
    records = []
    for chunk in chunks:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


def test_a_sweep_is_one_experiment_with_a_run_per_job_in_mlflow_and_wandb(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # as kdrun sets it for its own process
    pytest.importorskip("wandb")
    store = tmp_path / "mlruns"
    result = run_kdrun(
        "train", "-m", *TINY, "trainer.threads=1", "track=[mlflow,wandb]", f"tracking.mlflow.uri={store}", "lr=0.001,1e38",
        f"hydra.sweep.dir={tmp_path / 'multirun' / 'day' / 'sweep1'}", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]  # the lr=1e38 job diverges; the other completes
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store.as_uri())
    experiment = client.get_experiment_by_name("kdrun/day/sweep1")
    runs = {run.data.params["lr"]: run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"0.001", "1e+38"}
    assert [item.name for item in client.search_experiments() if item.name != "Default"] == ["kdrun/day/sweep1"]
    good, bad = runs["0.001"], runs["1e+38"]
    assert good.info.status == "FINISHED" and bad.info.status == "FAILED" and "loss became" in bad.data.tags["kdrun.error"]
    assert [item.step for item in client.get_metric_history(good.info.run_id, "distilled/val_acc")] == [1, 2]
    assert good.data.metrics["summary/distilled/test_acc"] > 0 and "summary/gap_recovered" in good.data.metrics
    assert good.data.params["teacher.name"] == "mlp" and good.data.tags["kdrun.run_dir"].endswith(good.info.run_name)
    assert {item.path for item in client.list_artifacts(good.info.run_id)} >= {
        ".hydra", "summary.json", "metrics.jsonl", "train.log", "distilled.safetensors"}
    (wandb_good,) = (Path(good.data.tags["kdrun.run_dir"]) / "wandb").glob("offline-run-*/run-*.wandb")
    (wandb_bad,) = (Path(bad.data.tags["kdrun.run_dir"]) / "wandb").glob("offline-run-*/run-*.wandb")
    for path, exit_code in ((wandb_good, 0), (wandb_bad, 1)):
        records = wandb_records(path)
        (run,) = [record.run for record in records if record.WhichOneof("record_type") == "run"]
        assert run.run_group == "kdrun/day/sweep1" and run.project == "kdrun"
        (exit_record,) = [record.exit for record in records if record.WhichOneof("record_type") == "exit"]
        assert exit_record.exit_code == exit_code
    history = [{item.key or "/".join(item.nested_key): item.value_json for item in record.history.item} for record in wandb_records(wandb_good)
               if record.WhichOneof("record_type") == "history"]
    assert [row["distilled/epoch"] for row in history if "distilled/val_acc" in row] == ["1", "2"]
    artifacts = [record.artifact for record in wandb_records(wandb_good) if record.WhichOneof("record_type") == "artifact"]
    assert {item.path for item in artifacts[0].manifest.contents} >= {"summary.json", ".hydra/config.yaml", "distilled.safetensors"}

"""The model cache under concurrency and damage: one process trains, the other waits and loads; a corrupt
or half-written entry is detected and trained again, never used."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import read_summary, wait_for_marker, write_idx
from kdrun.model_cache import ModelCache
from kdrun.models import build_model

ARGUMENTS = ["teacher_epochs=3", "student_epochs=1", "teacher.hidden=[32]", "dataset.max_train_samples=300",
             "trainer.progress=false"]


def test_two_concurrent_runs_train_the_teacher_once(tmp_path: Path, start_paused):
    """Run a holds the teacher's cache lock, paused inside its teacher phase, while run b reaches that lock:
    b must wait for a's entry and load it. The pause makes this order certain, not a matter of timing."""
    def start(name: str, **pause) -> tuple[subprocess.Popen, Path]:
        return start_paused("train", *ARGUMENTS, "trainer.checkpoint_seconds=0", f"hydra.run.dir={tmp_path / name}",
                            f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path, **pause)

    first, first_markers = start("a", pause_after="teacher:1")
    assert wait_for_marker(first, first_markers / "paused") == "teacher 1"  # a trains the teacher, holding its lock
    (teacher_lock,) = (tmp_path / "cache" / "teachers").glob("mlp-*.lock")
    second, second_markers = start("b", mark_locks=True)
    wait_for_marker(second, second_markers / f"locking-{teacher_lock.name.removesuffix('.lock')}")  # b is at the lock
    assert first.poll() is None  # a is still paused inside its teacher phase
    (first_markers / "release").touch()
    outputs = [process.communicate(timeout=300) for process in (first, second)]
    assert [process.returncode for process in (first, second)] == [0, 0], outputs
    summaries = [read_summary(tmp_path / name) for name in ("a", "b")]
    assert all(summary["status"] == "completed" for summary in summaries)
    assert [summary["phases"]["teacher"]["source"] for summary in summaries] == ["trained", "cache"]
    for phase in ("teacher", "independent", "distilled"):
        assert summaries[0]["phases"][phase]["test_acc"] == summaries[1]["phases"][phase]["test_acc"]
    assert len(list((tmp_path / "cache" / "teachers").glob("mlp-*/meta.json"))) == 1
    assert not list((tmp_path / "cache" / "teachers").glob(".*"))  # no staging folder left behind


def damage_truncated(entry: Path) -> None:
    data = (entry / "weights.safetensors").read_bytes()
    (entry / "weights.safetensors").write_bytes(data[: len(data) // 2])


def damage_flipped_byte(entry: Path) -> None:
    data = bytearray((entry / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF  # still a well-formed file: only the recorded sha256 can tell
    (entry / "weights.safetensors").write_bytes(bytes(data))


def damage_no_meta(entry: Path) -> None:  # killed between the weights and the meta (a half-written entry)
    (entry / "meta.json").unlink()


def damage_meta_garbage(entry: Path) -> None:
    (entry / "meta.json").write_text('{"identity": ')


def damage_weights_missing(entry: Path) -> None:
    (entry / "weights.safetensors").unlink()


@pytest.mark.parametrize("damage", [damage_truncated, damage_flipped_byte, damage_no_meta, damage_meta_garbage,
                                    damage_weights_missing])
def test_damaged_entry_is_detected_and_not_used(tmp_path: Path, damage):
    cache = ModelCache(tmp_path / "cache")
    entry = cache.entry("mlp", "0123456789abcdef")
    torch.manual_seed(0)
    trained = build_model("mlp", (1, 8, 8), 10, hidden=[16], dropout=0.5)
    with cache.locked(entry):
        cache.store(entry, trained, {"identity": {}, "result": {"test_acc": 0.5}})
    fresh = build_model("mlp", (1, 8, 8), 10, hidden=[16], dropout=0.5)
    assert cache.load(entry, fresh) is not None and torch.equal(fresh.state_dict()["1.weight"], trained.state_dict()["1.weight"])
    damage(entry)
    torch.manual_seed(1)
    other = build_model("mlp", (1, 8, 8), 10, hidden=[16], dropout=0.5)
    before = {name: value.clone() for name, value in other.state_dict().items()}
    assert cache.load(entry, other) is None  # the pipeline then trains the model again
    assert all(torch.equal(value, before[name]) for name, value in other.state_dict().items())
    with cache.locked(entry):  # the retrained model replaces whatever was left
        cache.store(entry, trained, {"identity": {}, "result": {"test_acc": 0.5}})
    assert cache.load(entry, other) is not None and torch.equal(other.state_dict()["1.weight"], trained.state_dict()["1.weight"])


def test_damaged_teacher_entry_is_retrained_through_the_cli(tmp_path: Path):
    from conftest import run_kdrun

    arguments = ["train", *ARGUMENTS, "student_epochs=0", "independent=false", f"cache_dir={tmp_path / 'cache'}"]
    first = run_kdrun(*arguments, f"hydra.run.dir={tmp_path / 'first'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (entry,) = [path for path in (tmp_path / "cache" / "teachers").glob("mlp-*") if path.is_dir()]
    damage_flipped_byte(entry)
    second = run_kdrun(*arguments, f"hydra.run.dir={tmp_path / 'second'}", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "is invalid" in second.stderr and read_summary(tmp_path / "second")["phases"]["teacher"]["source"] == "trained"
    assert read_summary(tmp_path / "second")["phases"]["teacher"]["test_acc"] == read_summary(tmp_path / "first")["phases"]["teacher"]["test_acc"]
    assert json.loads((entry / "meta.json").read_text())["weights_sha256"]  # a valid entry again


def test_a_cached_model_reports_its_recorded_test_accuracy_only_on_the_same_test_split(kdrun_in, tiny_mnist: Path):
    data = ["dataset=mnist", f"dataset.root={tiny_mnist}", "dataset.download=false", "teacher.hidden=[32]",
            "teacher_epochs=2", "student_epochs=1", "trainer.progress=false"]
    first, first_dir = kdrun_in(*data, run_name="first")
    assert first.returncode == 0, first.stderr
    tested = read_summary(first_dir)["phases"]["teacher"]["test_acc"]
    assert tested >= 0.8
    (meta_path,) = (tiny_mnist.parent / "cache" / "teachers").glob("mlp-*/meta.json")
    meta = json.loads(meta_path.read_text())
    meta["result"].update(test_acc=0.125, test_acc_last=0.25)  # marks: only a reused record can report these
    meta_path.write_text(json.dumps(meta))
    same, same_dir = kdrun_in(*data, run_name="same")
    teacher = read_summary(same_dir)["phases"]["teacher"]
    assert same.returncode == 0 and teacher["source"] == "cache"
    assert (teacher["test_acc"], teacher["test_acc_last"]) == (0.125, 0.25)  # same test split: not tested again
    labels_path = tiny_mnist / "t10k-labels-idx1-ubyte.gz"
    labels = np.frombuffer(gzip.decompress(labels_path.read_bytes())[8:], dtype=np.uint8)
    write_idx(labels_path, (labels + 1) % 10)  # another test split, same train/val: the same cache entry
    changed, changed_dir = kdrun_in(*data, run_name="changed")
    teacher = read_summary(changed_dir)["phases"]["teacher"]
    assert changed.returncode == 0 and teacher["source"] == "cache"
    assert teacher["test_acc"] == teacher["test_acc_last"] <= 1 - tested + 1e-9  # tested now, on the shifted labels

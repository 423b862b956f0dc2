"""teacher.augment: the teacher phase trains on its own augmentation, the students on the dataset's.

Hinton et al. 2015 trained the MNIST teacher on images jittered by up to 2 pixels and the students on
the plain images; with the students' inputs deterministic, their teacher logits are computed once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import kdrun.training.context as context_module
from conftest import TINY, compose_config, read_summary, run_kdrun
from kdrun.data.augment import build_augmentation
from kdrun.errors import ConfigError
from kdrun.results import RunProgress
from kdrun.training.from_config import settings_from_config
from kdrun.training.pipeline import run_pipeline
from kdrun.training.run_files import Observers

SMALL = ["teacher.hidden=[16]", "student.hidden=[8]", *TINY]
SHIFT = "teacher.augment={name:shift,pixels:2}"


def first_batch_moved(batches) -> bool:
    """Whether the first training batch differs from the same samples without augmentation.

    The batches' generator is put back afterwards, so the phase trains on exactly what it would have.
    """
    state = batches.generator.get_state()
    batch = next(iter(batches))
    plain = batches.normalise(batches.images.index_select(0, batch.indices))
    batches.generator.set_state(state)
    return not torch.equal(batch.inputs, plain)


def moved_per_phase(run_dir: Path, monkeypatch, *overrides: str) -> dict[str, bool]:
    """Run the pipeline in process on `overrides`; per training phase, whether its inputs were augmented."""
    moved: dict[str, bool] = {}
    real_train_phase = context_module.train_phase

    def recording_train_phase(phase, model, objective, train_batches, *rest):
        moved[phase] = first_batch_moved(train_batches)
        return real_train_phase(phase, model, objective, train_batches, *rest)

    monkeypatch.setattr(context_module, "train_phase", recording_train_phase)
    run_dir.mkdir()
    cfg = compose_config(*overrides, *SMALL, f"cache_dir={run_dir / 'cache'}")
    run_pipeline(settings_from_config(cfg), run_dir, Observers([]), RunProgress())
    monkeypatch.setattr(context_module, "train_phase", real_train_phase)
    return moved


def test_the_teacher_phase_sees_shifted_inputs_and_the_student_phases_do_not(tmp_path: Path, monkeypatch):
    assert moved_per_phase(tmp_path / "run", monkeypatch, SHIFT) == {"teacher": True, "independent": False, "distilled": False}


@pytest.mark.parametrize("teacher_augment, teacher_moved", [("null", True), ("none", False)])
def test_dataset_augment_still_reaches_the_students(teacher_augment: str, teacher_moved: bool, tmp_path: Path, monkeypatch):
    """teacher.augment=null (the default) means the dataset's augmentation, teacher.augment=none none."""
    moved = moved_per_phase(tmp_path / "run", monkeypatch, "dataset.augment={name:shift,pixels:1}",
                            f"teacher.augment={teacher_augment}")
    assert moved == {"teacher": teacher_moved, "independent": True, "distilled": True}


def test_students_keep_cached_teacher_logits_and_the_key_follows_the_teachers_augmentation(kdrun_in, tmp_path: Path):
    result, run_dir = kdrun_in(SHIFT, *SMALL, run_name="teacher-shifted")
    assert result.returncode == 0, result.stderr
    log = (run_dir / "train.log").read_text()
    assert "teacher logits computed for" in log and "not cached" not in log
    entries = list((tmp_path / "cache" / "teachers").glob("mlp-*[!k]"))
    assert len(entries) == 1 and (entries[0] / "train_logits.safetensors").is_file()
    assert read_summary(run_dir)["phases"]["distilled"]["teacher_logits_seconds"] > 0

    # the same teacher with the same effective augmentation, given as the dataset's: the same cache entry
    result, run_dir = kdrun_in("dataset.augment={name:shift,pixels:2}", "independent=false", *SMALL, run_name="dataset-shifted")
    assert result.returncode == 0, result.stderr
    assert read_summary(run_dir)["phases"]["teacher"]["source"] == "cache"

    # another teacher augmentation is another teacher: trained again, its own entry
    result, run_dir = kdrun_in("teacher.augment={name:shift,pixels:1}", "independent=false", *SMALL, run_name="teacher-shift-1")
    assert result.returncode == 0, result.stderr
    assert read_summary(run_dir)["phases"]["teacher"]["source"] == "trained"
    assert len(list((tmp_path / "cache" / "teachers").glob("mlp-*[!k]"))) == 2


@pytest.mark.parametrize("value, message", [
    ("shfit", "teacher.augment: unknown augmentation 'shfit'"),
    ("{name:shift,pixels:0}", "teacher.augment: shift pixels=0 must be an integer >= 1"),
    ("{pixels:2}", "teacher.augment: {'pixels': 2} has no 'name'"),
])
def test_a_bad_teacher_augment_is_a_one_line_error_and_leaves_no_run(value: str, message: str, tmp_path: Path):
    result = run_kdrun("train", f"teacher.augment={value}", *SMALL, f"hydra.run.dir={tmp_path / 'run'}",
                       f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"kdrun: error: {message}") and result.stderr.count("\n") == 1, result.stderr  # before the data
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_augmentation_errors_name_their_key():
    with pytest.raises(ConfigError) as error:
        build_augmentation("shfit", "teacher.augment")
    assert error.value.message.startswith("teacher.augment: unknown augmentation")
    with pytest.raises(ConfigError) as error:
        build_augmentation({"name": "shift", "pixels": -1})
    assert error.value.message.startswith("dataset.augment: shift pixels=-1")


def test_the_hinton_preset_shifts_the_teachers_images_only():
    settings = settings_from_config(compose_config("experiment=hinton_mnist"))
    assert settings.teacher_augment == {"name": "shift", "pixels": 2} and settings.augment == "none"
    assert settings.teacher.name == "lenet5" and "augment" not in settings.teacher.options  # not an architecture option
    assert settings.student.options == {"hidden": [800, 800], "dropout": 0.0}

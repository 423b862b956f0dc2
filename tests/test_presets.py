"""Every recipe preset composes and runs end to end on tiny data in its real on-disk format.

The CIFAR-100 benchmark pairs (cifar100_<teacher>_<student>[_dkd]) are tested together in
tests/test_benchmarks.py; their shared protocol, cifar100_crd, is a preset of its own here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_benchmarks import BENCHMARK_PRESETS

from conftest import read_summary, run_kdrun, write_cifar100, write_tree

PRESETS = sorted(
    path.stem for path in (Path(__file__).resolve().parent.parent / "conf" / "experiment").glob("*.yaml")
    if path.stem not in BENCHMARK_PRESETS
)
ONE_EPOCH = ["teacher_epochs=1", "student_epochs=1", "trainer.progress=false"]


def flowers_root(tmp_path: Path) -> Path:
    classes = {name: 6 for name in ("daisy", "dandelion", "rose", "sunflower", "tulip")}
    write_tree(tmp_path / "flowers" / "train", classes, size=(40, 30))
    write_tree(tmp_path / "flowers" / "test", {name: 2 for name in classes}, size=(30, 40))
    return tmp_path / "flowers"


def cifar_root(tmp_path: Path) -> Path:
    write_tree(tmp_path / "cifar" / "train", {f"class{k}": 4 for k in range(10)}, size=(32, 32))
    write_tree(tmp_path / "cifar" / "test", {f"class{k}": 1 for k in range(10)}, size=(32, 32))
    return tmp_path / "cifar"


# Per preset: tiny data on disk and the overrides that shrink the recipe to seconds (small images,
# one epoch; R3's ImageNet weights cannot be downloaded in tests, so its teacher starts from scratch).
TINY_SETUPS = {
    "mnist_mlp": lambda tmp, mnist: [f"dataset.root={mnist}"],
    "hinton_mnist": lambda tmp, mnist: [f"dataset.root={mnist}", "dataset.download=false"],
    "flowers_vgg11_shufflenet": lambda tmp, mnist: [f"dataset.root={flowers_root(tmp)}", "dataset.image_size=32"],
    "cifar10_resnet50_smallcnn": lambda tmp, mnist: [
        f"dataset.root={cifar_root(tmp)}", "dataset.image_size=32", "teacher.weights=null", "teacher.freeze_backbone=false",
    ],
    "cifar100_crd": lambda tmp, mnist: [
        f"dataset.root={write_cifar100(tmp / 'cifar100', 10, 1)}", "dataset.download=false", "dataset.max_train_samples=64",
    ],
}


def test_every_preset_has_a_tiny_setup():
    assert sorted(TINY_SETUPS) == PRESETS


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes(preset: str, tmp_path: Path):
    result = run_kdrun("train", f"experiment={preset}", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "teacher_epochs" in result.stdout and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_end_to_end_on_tiny_data(preset: str, kdrun_in, tiny_mnist: Path, tmp_path: Path):
    overrides = TINY_SETUPS[preset](tmp_path, tiny_mnist)
    result, run_dir = kdrun_in(f"experiment={preset}", *overrides, *ONE_EPOCH)
    assert result.returncode == 0, result.stderr
    summary = read_summary(run_dir)
    assert summary["status"] == "completed"
    assert {phase: summary["phases"][phase]["source"] for phase in ("teacher", "independent", "distilled")} == {
        "teacher": "trained", "independent": "trained", "distilled": "trained",
    }

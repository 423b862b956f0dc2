"""The default run is the one docs/default-run.md documents, R4's preset stays R4, and the search script ranks
settings by validation only."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from conftest import REPO, compose_config


def test_default_config_is_the_searched_setting():
    cfg = compose_config()
    assert (cfg.dataset.name, cfg.method.name, cfg.T, cfg.alpha) == ("digits", "weighted", 2.0, 0.1)
    assert (cfg.teacher.name, list(cfg.teacher.hidden), cfg.teacher.dropout) == ("mlp", [1200, 1200], 0.5)
    assert (cfg.student.name, list(cfg.student.hidden), cfg.student.dropout) == ("mlp", [20, 20], 0.0)
    assert (cfg.teacher_epochs, cfg.student_epochs, cfg.batch_size, cfg.lr) == (20, 20, 32, 0.001)
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.scheduler is None


def test_r4_preset_keeps_r4_whatever_the_defaults():
    """RECIPES.md R4: 784-1200-1200-10 and 784-20-20-10, both dropout 0.5; Adam 1e-4, batch 32; T=7;
    0.3 * CE + 0.7 * KL without T^2; teacher 6 epochs, students 3 (equal budgets, kdrun's fix)."""
    cfg = compose_config("experiment=mnist_mlp")
    assert (list(cfg.teacher.hidden), cfg.teacher.dropout, list(cfg.student.hidden), cfg.student.dropout) == (
        [1200, 1200], 0.5, [20, 20], 0.5)
    assert (cfg.dataset.name, cfg.method.name, cfg.T, cfg.alpha, cfg.method.scale_by_T2) == ("mnist", "weighted", 7.0, 0.7, False)
    assert (cfg.lr, cfg.batch_size, cfg.teacher_epochs, cfg.student_epochs) == (0.0001, 32, 6, 3)
    assert cfg.optimizer._target_ == "torch.optim.Adam"


def test_r1_preset_keeps_the_temperature_it_always_had():
    assert compose_config("experiment=flowers_vgg11_shufflenet").T == 4.0


def write_job(sweep: Path, number: int, overrides: list[str], val: tuple[float, float, float], status: str = "completed") -> None:
    job = sweep / str(number)
    job.mkdir(parents=True)
    phases = {phase: {"best_val_acc": value, "test_acc": 1.0 - value} for phase, value in zip(("teacher", "independent", "distilled"), val)}
    (job / "summary.json").write_text(json.dumps({"status": status, "overrides": overrides, "phases": phases}))


def test_search_script_ranks_settings_by_mean_validation_gain(tmp_path: Path):
    spec = importlib.util.spec_from_file_location("default_run_search", REPO / "scripts" / "default_run_search.py")
    search = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(search)
    sweep = tmp_path / "sweep"
    common = ["student.dropout=0", "trainer.threads=1"]
    write_job(sweep, 0, ["T=2", "seed=0", *common], (0.99, 0.90, 0.92))
    write_job(sweep, 1, ["T=2", "seed=1", *common], (0.99, 0.90, 0.89))  # T=2: gains +2, -1 -> +0.50
    write_job(sweep, 2, ["T=4", "seed=0", *common], (0.99, 0.90, 0.95))
    write_job(sweep, 3, ["T=4", "seed=1", *common], (0.99, 0.90, 0.85))  # T=4: +5, -5 -> 0.00
    write_job(sweep, 4, ["T=4", "seed=2", *common], (0.99, 0.10, 0.99), status="failed")  # ignored
    lines = search.rows(search.collect([sweep]))
    assert lines[0] == "In every setting: `student.dropout=0`"
    assert lines[4:] == [
        "| `T=2` | 2 | 0.9900 ± 0.0000 | 0.9000 ± 0.0000 | 0.9050 ± 0.0212 | +0.50 | 1/2 |",
        "| `T=4` | 2 | 0.9900 ± 0.0000 | 0.9000 ± 0.0000 | 0.9000 ± 0.0707 | +0.00 | 1/2 |",
    ]

"""The CIFAR-100 benchmark presets (docs/benchmarks.md): the CRD protocol, mdistiller's loss weights, one tiny run each.

Expected values are the reference trainers' settings, written out here from their sources (mdistiller
configs/cifar100/*.yaml and mdistiller/engine/cfg.py; RepDistiller train_student.py), not read back
from kdrun's own config files.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import REPO, compose_config, read_metrics, run_kdrun, write_cifar100
from kdrun.methods import METHODS, FrozenTeacher
from kdrun.training.from_config import make_factory, plain

# preset stem: (teacher, student, DKD beta of mdistiller's configs/cifar100/dkd/<pair>.yaml)
PAIRS = {
    "resnet32x4_resnet8x4": ("resnet32x4", "resnet8x4", 8.0),
    "resnet56_resnet20": ("resnet56", "resnet20", 2.0),
    "resnet110_resnet32": ("resnet110", "resnet32", 2.0),
    "wrn_40_2_wrn_16_2": ("wrn_40_2", "wrn_16_2", 6.0),
    "wrn_40_2_wrn_40_1": ("wrn_40_2", "wrn_40_1", 6.0),
    "vgg13_vgg8": ("vgg13", "vgg8", 6.0),
}
BENCHMARK_PRESETS = [f"cifar100_{pair}{variant}" for pair in PAIRS for variant in ("", "_dkd")]
DECAY_EPOCHS, DECAY_RATE = (150, 180, 210), 0.1


def compose_preset(preset: str, *overrides: str):
    return compose_config(f"experiment={preset}", *overrides)


def method_weights(cfg) -> dict[str, float]:
    options = plain(cfg.method)
    method = METHODS.build(options.pop("name"), FrozenTeacher(nn.Linear(2, 2)), cfg.T, cfg.alpha, **options)
    return method.weights


def test_every_pair_has_a_kd_and_a_dkd_preset():
    on_disk = sorted(path.stem for path in (REPO / "conf" / "experiment").glob("cifar100_*.yaml"))
    assert on_disk == sorted(["cifar100_crd", *BENCHMARK_PRESETS])


@pytest.mark.parametrize("preset", BENCHMARK_PRESETS)
def test_preset_follows_the_crd_protocol(preset: str):
    cfg = compose_preset(preset)
    teacher, student, beta = PAIRS[preset.removeprefix("cifar100_").removesuffix("_dkd")]
    assert (cfg.teacher.name, cfg.student.name, cfg.dataset.name) == (teacher, student, "cifar100")
    assert (cfg.lr, cfg.batch_size, cfg.teacher_epochs, cfg.student_epochs, cfg.T) == (0.05, 64, 240, 240, 4.0)
    optimizer = cfg.optimizer
    assert (optimizer._target_, optimizer.momentum, optimizer.nesterov, optimizer.weight_decay) == ("torch.optim.SGD", 0.9, False, 5e-4)
    assert cfg.scheduler._target_ == "torch.optim.lr_scheduler.MultiStepLR"
    assert (list(cfg.scheduler.milestones), cfg.scheduler.gamma) == (list(DECAY_EPOCHS), DECAY_RATE)
    assert cfg.dataset.augment == "crop_flip"
    assert (list(cfg.dataset.mean), list(cfg.dataset.std)) == ([0.5071, 0.4867, 0.4408], [0.2675, 0.2565, 0.2761])
    if preset.endswith("_dkd"):  # mdistiller: CE_WEIGHT 1, ALPHA 1, BETA per pair, T 4
        assert cfg.method.name == "dkd" and method_weights(cfg) == {"ce": 1.0, "tckd": 1.0, "nckd": beta}
        assert cfg.method.warmup_epochs == 20  # WARMUP 20
    else:  # mdistiller KD: CE_WEIGHT 0.1, KD_WEIGHT 0.9, TEMPERATURE 4, kd_loss multiplied by T^2
        assert cfg.method.name == "weighted" and cfg.method.scale_by_T2 is True
        assert method_weights(cfg) == pytest.approx({"ce": 0.1, "kd": 0.9})


def test_lr_schedule_matches_the_reference_step_rule():
    """mdistiller's adjust_learning_rate: lr = 0.05 * 0.1 ** (number of decay epochs < epoch), epochs from 1."""
    cfg = compose_preset("cifar100_crd")
    weight = nn.Parameter(torch.zeros(1))
    optimizer = make_factory(cfg.optimizer, "optimizer")([weight])
    scheduler = make_factory(cfg.scheduler, "scheduler")(optimizer)
    for epoch in range(1, 241):
        expected = 0.05 * DECAY_RATE ** sum(epoch > decay for decay in DECAY_EPOCHS)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12), epoch
        optimizer.step()
        scheduler.step()  # kdrun steps the scheduler once after every epoch


def test_every_benchmark_preset_runs_one_tiny_step(tmp_path: Path):
    """All presets in one multirun on 32 CIFAR-100 images shrunk to 8x8 (these models at 32x32 take seconds
    per step on 2 cores; one thread, as two threads on busy cores wait on each other up to 10x longer). Pairs with
    the same teacher share it (trained once); the lr drops x0.1 after a milestone."""
    root = write_cifar100(tmp_path / "data", train_per_class=10, test_per_class=1)
    sweep = tmp_path / "sweep"
    arguments = [
        "train", "-m", f"experiment={','.join(BENCHMARK_PRESETS)}", f"++dataset.root={root}", "++dataset.download=false",
        "++dataset.image_size=8", "dataset.max_train_samples=32", "batch_size=16", "teacher_epochs=2", "student_epochs=1",
        "++scheduler.milestones=[1]",
        "trainer.progress=false", "trainer.threads=1", f"hydra.sweep.dir={sweep}", f"cache_dir={tmp_path / 'cache'}",
    ]
    result = run_kdrun(*arguments, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (sweep / "sweep.jsonl").read_text().splitlines()]
    assert len(rows) == len(BENCHMARK_PRESETS) and {row["status"] for row in rows} == {"completed"}
    teacher_sources: dict[str, list[str]] = {}  # teacher model -> source in each job that uses it
    for job in (path for path in sweep.iterdir() if (path / "summary.json").is_file()):
        summary = json.loads((job / "summary.json").read_text())
        preset = next(item.split("=", 1)[1] for item in summary["overrides"] if item.startswith("experiment="))
        teacher = PAIRS[preset.removeprefix("cifar100_").removesuffix("_dkd")][0]
        teacher_sources.setdefault(teacher, []).append(summary["phases"]["teacher"]["source"])
        teacher_lrs = [line["lr"] for line in read_metrics(job) if line["phase"] == "teacher"]
        assert teacher_lrs == [] or teacher_lrs == pytest.approx([0.05, 0.005])  # x0.1 after milestone epoch 1
    assert {teacher: sources.count("trained") for teacher, sources in teacher_sources.items()} == dict.fromkeys(
        {pair[0] for pair in PAIRS.values()}, 1)


def load_table_script():
    spec = importlib.util.spec_from_file_location("cifar100_table", REPO / "scripts" / "cifar100_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(out: Path, preset: str, seed: int, status: str, accuracies: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> None:
    directory = out / preset / f"seed_{seed}"
    directory.mkdir(parents=True)
    phases = {phase: {"test_acc": value} for phase, value in zip(("teacher", "independent", "distilled"), accuracies)}
    (directory / "summary.json").write_text(json.dumps({"status": status, "phases": phases}))


def test_table_script_fills_the_measured_columns_from_completed_runs_only(tmp_path: Path):
    table = load_table_script()
    out, doc = tmp_path / "out", tmp_path / "benchmarks.md"
    doc.write_text(f"intro\n{table.BEGIN}\nold table\n{table.END}\noutro\n")
    write_run(out, "cifar100_vgg13_vgg8_dkd", 0, "completed", (0.7464, 0.7036, 0.7400))
    write_run(out, "cifar100_vgg13_vgg8_dkd", 1, "completed", (0.7464, 0.7100, 0.7500))
    write_run(out, "cifar100_vgg13_vgg8_dkd", 2, "failed", (0.1, 0.1, 0.1))
    write_run(out, "cifar100_resnet56_resnet20", 0, "completed", (0.72, 0.69, 0.7066))
    table.fill(out, doc)
    text = doc.read_text()
    assert text.startswith(f"intro\n{table.BEGIN}\n| teacher") and text.endswith(f"{table.END}\noutro\n") and "old table" not in text
    rows = {line.split("`")[1].split()[2]: line for line in text.splitlines() if line.startswith("| ") and "`" in line}
    assert len(rows) == 12
    # 74.00 and 75.00: mean 74.50, sample std 0.7071
    assert rows["experiment=cifar100_vgg13_vgg8_dkd"].endswith("| 74.64 ± 0.00 (2 seeds) | 70.68 ± 0.45 (2 seeds) | 74.50 ± 0.71 (2 seeds) |")
    assert "74.64 / 70.36 / **74.68**" in rows["experiment=cifar100_vgg13_vgg8_dkd"]
    assert rows["experiment=cifar100_resnet56_resnet20"].endswith("| 72.00 (1 seed) | 69.00 (1 seed) | 70.66 (1 seed) |")
    assert rows["experiment=cifar100_vgg13_vgg8"].endswith("| not run | not run | not run |")


def test_table_script_skips_finished_runs_resumes_interrupted_ones_and_stops_on_bad_input(tmp_path: Path, monkeypatch):
    table = load_table_script()
    out, commands, exit_codes = tmp_path / "out", [], {}
    write_run(out, "cifar100_resnet32x4_resnet8x4", 0, "completed")
    write_run(out, "cifar100_resnet32x4_resnet8x4_dkd", 0, "interrupted")

    def fake_run(command, cwd):
        commands.append(command)
        return subprocess.CompletedProcess(command, exit_codes.get(len(commands), 0))

    monkeypatch.setattr(table.subprocess, "run", fake_run)
    assert table.run_all("/data", [0], out, ["device=cuda"]) == 0
    presets = [next(item for item in command if item.startswith("experiment=")) for command in commands]
    assert len(commands) == 11 and "experiment=cifar100_resnet32x4_resnet8x4" not in presets
    assert commands[0][-2:] == ["device=cuda", "resume=true"] and all("resume=true" not in command for command in commands[1:])
    assert f"hydra.run.dir={out / 'cifar100_resnet56_resnet20' / 'seed_0'}" in commands[1]
    commands.clear()
    exit_codes.update({2: 1, 3: table.BAD_INPUT})  # a failed run goes on, bad input stops the table
    assert table.run_all("/data", [1], out, []) == 2 and len(commands) == 3

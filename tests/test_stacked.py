"""Stacked students (kdrun/training/stacked/): K distilled students in one vmapped pass equal K solo runs.

Tolerance: the stacked forward multiplies batched matrices (bmm) where a solo run multiplies one (mm),
so sums are rounded in another order: parameters differ by a few float32 ulps per step (measured
<= 1e-7 after 2 epochs here). The tests allow 1e-5 on parameters and logits, 1e-4 relative on
the epoch losses, and 2 images on accuracies; everything discrete (best epoch) must be equal. Dropout
masks are bit-identical (randomness="same", shared seed): a stack drawing other masks fails these tests.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from conftest import read_metrics, read_summary
from kdrun.data import DATASETS, make_splits
from kdrun.data.batches import InMemoryBatches
from kdrun.methods import METHODS, CrossEntropy, FrozenTeacher
from kdrun.models import build_model
from kdrun.training.loop import PhaseSettings, train_phase
from kdrun.training.run_files import Observers
from kdrun.training.speed import use_fast_dropout
from kdrun.training.stacked.loop import train_stacked

CPU = torch.device("cpu")
EPOCHS = 2
ADAM = PhaseSettings(EPOCHS, functools.partial(torch.optim.Adam, lr=1e-2, fused=True))
SGD = PhaseSettings(EPOCHS, functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-4))
# (method, T, alpha, options): the loss values a stack may differ in, a T schedule and a member whose loss is NaN
MEMBERS = [("weighted", 2.0, 0.2, {}), ("weighted", 4.0, 0.8, {}), ("weighted", 8.0, 0.5, {"schedule": "linear"}),
           ("weighted", 4.0, 0.5, {"weights": {"ce": 0.3, "kd": 0.7}})]
NAN_MEMBER = ("weighted", 1e-45, 0.5, {})  # logits / 1e-45 overflow: the solo run fails with a NaN loss
STUDENTS = {"mlp": {"hidden": [20, 20], "dropout": 0.5}, "tiny_cnn": {"width": 4}}


@pytest.fixture(scope="module")
def setup():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and no spin-waiting on shared cores
    yield trained_teacher()
    torch.set_num_threads(threads)


def trained_teacher():
    data = make_splits(DATASETS.build("digits", 0), 0.1, 300, seed=0)
    torch.manual_seed(1)
    teacher = build_model("mlp", data.input_shape, data.num_classes, hidden=[64])
    train_phase("teacher", teacher, CrossEntropy(), batches(data, "train", True), batches(data, "val"), batches(data, "test"),
                ADAM, Observers([]))
    logits = FrozenTeacher(teacher).cache_logits(batches(data, "train"), len(data.train))
    return data, teacher, logits


def batches(data, split, shuffle=False):
    return InMemoryBatches(getattr(data, split), data.mean, data.std, 32 if shuffle else 512, CPU, shuffle, seed=0)


def student(data, architecture):
    torch.manual_seed(0)  # as a run builds it: the seed, then the model (fast dropout as on CPU by default)
    model = build_model(architecture, data.input_shape, data.num_classes, **STUDENTS[architecture])
    use_fast_dropout(model)
    return model


def method(teacher, logits, member):
    name, temperature, alpha, options = member
    objective = METHODS.build(name, FrozenTeacher(teacher), temperature, alpha, **copy.deepcopy(options))
    objective.teacher.cached_logits = logits
    return objective


def solo_and_stacked(setup, architecture, members, settings):
    data, teacher, logits = setup
    solo = []
    for member in members:
        model = student(data, architecture)
        try:
            solo.append((train_phase("distilled", model, method(teacher, logits, member), batches(data, "train", True),
                                     batches(data, "val"), batches(data, "test"), settings, Observers([])), model))
        except Exception as error:  # noqa: BLE001 - the NaN member's RunError, compared below
            solo.append((error, None))
    students = [student(data, architecture) for _ in members]
    stacked = train_stacked("distilled", students, [method(teacher, logits, member) for member in members],
                            batches(data, "train", True), batches(data, "val"), batches(data, "test"), settings)
    return data, solo, stacked


def assert_same_run(data, solo_result, model, outcome, architecture):
    result = outcome.result
    assert result.best_epoch == solo_result.best_epoch
    two_images = 2 / len(data.test) + 1e-9
    assert abs(result.test_acc - solo_result.test_acc) <= two_images
    assert abs(result.test_acc_last - solo_result.test_acc_last) <= two_images
    assert abs(result.best_val_acc - solo_result.best_val_acc) <= 2 / len(data.val) + 1e-9
    for mine, theirs in zip(result.history, solo_result.history):
        assert mine.T == pytest.approx(theirs.T) and mine.lr == theirs.lr
        assert mine.loss == pytest.approx(theirs.loss, rel=1e-4)
        assert mine.train_acc == pytest.approx(theirs.train_acc, abs=2 / len(data.train))
    state = model.state_dict()
    assert set(outcome.state) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(outcome.state[key], value, atol=1e-5, rtol=0)
    stacked_model = student(data, architecture)
    stacked_model.load_state_dict(outcome.state)
    inputs = next(iter(batches(data, "test"))).inputs
    with torch.no_grad():
        torch.testing.assert_close(stacked_model.eval()(inputs), model.eval()(inputs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("architecture", sorted(STUDENTS))
def test_stacked_students_equal_the_same_jobs_trained_alone(setup, architecture):
    data, solo, stacked = solo_and_stacked(setup, architecture, MEMBERS, ADAM)
    assert [outcome.members for outcome in stacked] == [len(MEMBERS)] * len(MEMBERS)
    for (solo_result, model), outcome in zip(solo, stacked):
        assert outcome.error is None
        assert_same_run(data, solo_result, model, outcome, architecture)
    distinct = {round(outcome.result.history[-1].loss["kd"], 6) for outcome in stacked}
    assert len(distinct) == len(MEMBERS)  # each member trained under its own loss, not the first one's


def test_sgd_with_momentum_and_other_methods_stack_exactly_too(setup):
    members = [("basic", 2.0, 0.5, {}), ("basic", 6.0, 0.5, {})]
    data, solo, stacked = solo_and_stacked(setup, "mlp", members, SGD)
    for (solo_result, model), outcome in zip(solo, stacked):
        assert_same_run(data, solo_result, model, outcome, "mlp")


def test_hard_label_members_stack_exactly(setup):
    data, solo, stacked = solo_and_stacked(setup, "mlp", [("hard", 4.0, 0.3, {}), ("hard", 4.0, 0.9, {})], ADAM)
    for (solo_result, model), outcome in zip(solo, stacked):
        assert_same_run(data, solo_result, model, outcome, "mlp")


def test_dkd_members_with_their_own_beta_and_temperature_stack_exactly(setup):
    """DKD with its warm-up (2 epochs: weights 1/2... per epoch as mdistiller) and per-member T, beta, dkd_alpha."""
    members = [("dkd", 4.0, 0.5, {"beta": 8.0, "warmup_epochs": 2}), ("dkd", 2.0, 0.5, {"beta": 2.0, "warmup_epochs": 2}),
               ("dkd", 4.0, 0.9, {"beta": 8.0, "dkd_alpha": 0.5, "warmup_epochs": 2})]
    data, solo, stacked = solo_and_stacked(setup, "tiny_cnn", members, ADAM)
    for (solo_result, model), outcome in zip(solo, stacked):
        assert_same_run(data, solo_result, model, outcome, "tiny_cnn")
    assert len({round(outcome.result.history[-1].loss["nckd"], 6) for outcome in stacked}) == len(members)


def test_a_member_whose_loss_becomes_nan_fails_alone_with_the_solo_error(setup):
    members = [MEMBERS[0], NAN_MEMBER, MEMBERS[1]]
    data, solo, stacked = solo_and_stacked(setup, "mlp", members, ADAM)
    assert stacked[1].error is not None and stacked[1].result is None
    assert stacked[1].error.one_line() == solo[1][0].one_line()
    assert "loss became" in stacked[1].error.one_line()
    for index in (0, 2):
        solo_result, model = solo[index]
        assert_same_run(data, solo_result, model, stacked[index], "mlp")


def test_the_teacher_is_untouched_by_stacked_training(setup):
    data, teacher, logits = setup
    before = copy.deepcopy(teacher.state_dict())
    students = [student(data, "mlp") for _ in MEMBERS[:2]]
    train_stacked("distilled", students, [method(teacher, logits, member) for member in MEMBERS[:2]],
                  batches(data, "train", True), batches(data, "val"), batches(data, "test"), ADAM)
    assert not teacher.training and not any(parameter.requires_grad for parameter in teacher.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key


def settings_for(*overrides: str):
    from hydra import compose, initialize_config_dir

    from kdrun.config import config_dir, register_schema
    from kdrun.training.from_config import settings_from_config

    register_schema()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return settings_from_config(compose("config", overrides=list(overrides)))


def test_only_jobs_that_differ_in_the_distilled_loss_stack():
    from kdrun.training.stacked.grouping import plan_groups

    jobs = [settings_for(*overrides) for overrides in (
        ["alpha=0.1", "T=2"], ["alpha=0.9", "T=8"], ["+method.weights={ce: 0.3, kd: 0.7}"], ["method.schedule=linear"],  # 0-3: stack
        ["seed=1"], ["lr=0.01"], ["teacher.hidden=[64]"], ["student.hidden=[10]"], ["method=basic"],  # 4-8: a group each
        ["method=fitnets"], ["compress=[prune]"], ["method=basic", "T=9"],  # 9, 10 alone; 11 stacks with 8
        ["method=dkd", "method.beta=2"], ["method=dkd", "method.dkd_alpha=0.5", "T=2"],  # 12, 13: DKD's own options stack
        ["method=dkd", "method.warmup_epochs=0"],  # 14: another warm-up is not a term weight
    )]
    groups = {tuple(group.jobs): group.reason for group in plan_groups([*jobs, None], max_stack=64)}
    assert set(groups) == {(0, 1, 2, 3), (4,), (5,), (6,), (7,), (8, 11), (9,), (10,), (12, 13), (14,), (15,)}
    assert "method fitnets does not stack" in groups[(9,)]
    assert "compression" in groups[(10,)]
    assert "fails its checks" in groups[(15,)] and "in method.warmup_epochs" in groups[(14,)]
    assert "differs from job #0 in seed" in groups[(4,)] and "in teacher.hidden" in groups[(6,)]
    assert "in lr, optimizer.lr" in groups[(5,)]  # lr is the teacher's learning rate too: another teacher
    split = plan_groups(jobs[:4], max_stack=3)
    assert [group.jobs for group in split] == [[0, 1, 2], [3]]
    small = plan_groups(jobs[:4], max_stack=64, min_stack=5)
    assert [group.jobs for group in small] == [[0], [1], [2], [3]] and "min_stack=5" in small[0].reason


def test_a_stacked_sweep_writes_what_a_sequential_sweep_writes(tmp_path):
    """kdrun train -m with kdrun_stacked vs the basic launcher: same run dirs, same results to tolerance, a NaN job fails alone."""
    from conftest import run_kdrun

    sweep = ["alpha=0.2,0.8", "T=2,1e-45", "teacher_epochs=2", "student_epochs=2", "trainer.progress=false",
             "trainer.threads=1", "teacher.hidden=[64]", "dataset.max_train_samples=300"]
    dirs = {}
    for launcher in ("basic", "kdrun_stacked"):
        dirs[launcher] = tmp_path / launcher
        result = run_kdrun("train", "-m", *sweep, f"hydra/launcher={launcher}", f"hydra.sweep.dir={dirs[launcher]}",
                           f"cache_dir={tmp_path / launcher / 'cache'}", cwd=tmp_path)  # each trains its teacher
        assert result.returncode == 1 and "2 job(s) of the sweep failed" in result.stderr, result.stderr[-2000:]
    assert "#0 #1 #2 #3 together (4 students)" in result.stdout + result.stderr
    runs = {launcher: sorted(path for path in folder.iterdir() if path.is_dir() and path.name != "cache") for launcher, folder in dirs.items()}
    assert [run.name for run in runs["basic"]] == [run.name for run in runs["kdrun_stacked"]] and len(runs["basic"]) == 4
    for alone, stacked in zip(runs["basic"], runs["kdrun_stacked"]):
        assert layout(alone) == layout(stacked)
        mine, theirs = read_summary(stacked), read_summary(alone)
        assert mine["status"] == theirs["status"] and mine.get("error") == theirs.get("error")
        if theirs["status"] == "failed":
            assert "loss became" in mine["error"] and "distilled" not in mine["phases"]
            continue
        distilled = mine["phases"]["distilled"]
        assert distilled["stacked"] == 4 and "stacked" not in theirs["phases"]["distilled"]  # a stack of 4 (2 failed in it)
        assert distilled["best_epoch"] == theirs["phases"]["distilled"]["best_epoch"]
        assert abs(distilled["test_acc"] - theirs["phases"]["distilled"]["test_acc"]) <= 2 / mine["dataset"]["test"] + 1e-9
        lines, solo_lines = read_metrics(stacked), read_metrics(alone)
        assert [(line["phase"], line["epoch"]) for line in lines] == [(line["phase"], line["epoch"]) for line in solo_lines]
        for line, solo_line in zip(lines, solo_lines):
            assert line["loss"] == pytest.approx(solo_line["loss"], rel=1e-4)
    report = run_kdrun("report", str(dirs["kdrun_stacked"]), cwd=tmp_path)
    assert report.returncode == 0 and "2 failed" in (dirs["kdrun_stacked"] / "report.md").read_text(), report.stderr


def layout(run_dir):
    """The files of a run dir (event file names carry host and time, so only their folders count)."""
    return sorted(str(path.relative_to(run_dir).parent if "tfevents" in path.name else path.relative_to(run_dir))
                  for path in run_dir.rglob("*") if path.is_file())


def test_without_cached_teacher_logits_the_teacher_runs_inside_the_stack(setup):
    """trainer.cache_teacher_logits=false or random augmentation: every member's loss runs the teacher on the batch."""
    data, teacher, _ = setup
    data, solo, stacked = solo_and_stacked((data, teacher, None), "mlp", MEMBERS[:2], ADAM)
    for (solo_result, model), outcome in zip(solo, stacked):
        assert_same_run(data, solo_result, model, outcome, "mlp")


def test_a_batchnorm_student_takes_the_solo_step(setup):
    """resnet8x4 (BatchNorm): one training step's logits, gradients and running statistics equal the solo step's.

    Over many Adam steps a deep BatchNorm student drifts further from its solo run than the MLP (rounding
    differences flip the sign of near-zero updates; docs/stacked.md), so the per-step equality is what is tested.
    """
    from kdrun.training.stacked.students import StackedStudents

    data, teacher, logits = setup
    batch = next(iter(batches(data, "train", True)))
    models = [student_of(data, "resnet8x4") for _ in range(2)]
    solo, objective = copy.deepcopy(models[0]).train(), method(teacher, logits, MEMBERS[0])
    solo_logits, terms = objective(solo, batch)
    sum(terms.values()).backward()
    stack = StackedStudents(models)
    stack.train(True)
    weights = {name: torch.tensor([value] * 2) for name, value in objective.weights.items()}
    stacked_logits, stacked_terms = stack.losses(method(teacher, logits, MEMBERS[0]), batch, torch.tensor([2.0, 2.0]), weights)
    sum(stacked_terms.values()).sum().backward()
    torch.testing.assert_close(stacked_logits[1], solo_logits, atol=1e-5, rtol=0)
    for name, parameter in solo.named_parameters():
        torch.testing.assert_close(stack.params[name].grad[1], parameter.grad, atol=1e-5, rtol=1e-4)
    for name, buffer in solo.named_buffers():
        torch.testing.assert_close(stack.buffers[name][1], buffer, atol=1e-6, rtol=0)


def student_of(data, architecture):
    torch.manual_seed(0)
    return build_model(architecture, data.input_shape, data.num_classes)


def test_a_bad_stack_size_is_one_line_and_leaves_no_sweep_dir(tmp_path):
    from conftest import run_kdrun

    sweep_dir = tmp_path / "sweep"
    result = run_kdrun("train", "-m", "T=1,2", "hydra/launcher=kdrun_stacked", "hydra.launcher.max_stack=0",
                       f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "kdrun: error: hydra.launcher.max_stack=0 and min_stack=2 must be >= 1 (e.g. hydra.launcher.max_stack=64 hydra.launcher.min_stack=2)"]
    assert not sweep_dir.exists()

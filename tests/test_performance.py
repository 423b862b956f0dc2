"""The fast path gives the same results as the plain path; `kdrun bench --quick` runs. No timing asserts."""

from __future__ import annotations

import torch
from torch import nn

from conftest import TINY, read_summary, run_kdrun
from kdrun.bench.reference import loaders, train_reference
from kdrun.data import DATASETS, make_splits
from kdrun.data.batches import InMemoryBatches
from kdrun.methods import CrossEntropy, FrozenTeacher
from kdrun.models import build_model
from kdrun.training.loop import PhaseSettings, train_phase
from kdrun.training.run_files import Observers

CPU = torch.device("cpu")


def digits():
    return make_splits(DATASETS.build("digits", 0), 0.1, None, seed=0)


def test_cached_logits_equal_online_teacher_logits_in_shuffled_order():
    data = digits()
    torch.manual_seed(0)
    teacher = FrozenTeacher(build_model("mlp", data.input_shape, 10, hidden=[64], dropout=0.5))
    online = FrozenTeacher(teacher.model)
    teacher.cache_logits(InMemoryBatches(data.train, data.mean, data.std, 100, CPU, shuffle=True, seed=5), len(data.train))
    for batch in InMemoryBatches(data.train, data.mean, data.std, 32, CPU, shuffle=True, seed=1):
        assert torch.allclose(teacher.logits(batch), online.logits(batch), atol=1e-5)
    assert not teacher.cached_logits.is_inference()


def test_fast_path_and_reference_reach_the_same_accuracy():
    """Same model init, data, epochs, batch size and lr: accuracy agrees within noise of batch order."""
    data = digits()
    torch.manual_seed(0)
    ours = build_model("mlp", data.input_shape, 10, hidden=[64])
    torch.manual_seed(0)
    theirs = build_model("mlp", data.input_shape, 10, hidden=[64])
    batches = {
        split: InMemoryBatches(getattr(data, split), data.mean, data.std, 32 if split == "train" else 512, CPU, split == "train")
        for split in ("train", "val", "test")
    }
    settings = PhaseSettings(5, lambda parameters: torch.optim.Adam(parameters, lr=1e-3, fused=True))
    fast = train_phase("fast", ours, CrossEntropy(), batches["train"], batches["val"], batches["test"], settings, Observers([]))
    train, test = loaders(data, 32, seed=0)
    reference = train_reference(theirs, train, test, epochs=5, lr=1e-3)
    assert abs(fast.test_acc_last - reference.test_acc) < 0.04, (fast.test_acc_last, reference.test_acc)


def test_bf16_precision_runs_and_fp16_on_cpu_is_refused(kdrun_in):
    result, run_dir = kdrun_in(*TINY, "trainer.precision=bf16")
    assert result.returncode == 0, result.stderr
    assert read_summary(run_dir)["status"] == "completed"
    refused, _ = kdrun_in(*TINY, "trainer.precision=fp16", run_name="fp16")
    assert refused.returncode == 2 and "needs a CUDA device" in refused.stderr


def test_teacher_logits_are_kept_in_the_teacher_cache(kdrun_in):
    first, _ = kdrun_in(*TINY, run_name="first")
    second, second_dir = kdrun_in(*TINY, run_name="second")
    assert "teacher logits computed" in first.stderr
    assert "teacher logits loaded from the teacher cache" in second.stderr
    assert read_summary(second_dir)["status"] == "completed"


def test_bench_quick_runs_and_prints_ratios(tmp_path):
    result = run_kdrun("bench", "--quick", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for text in ("speed-up", "end to end", "GFLOP/s", "peak memory"):
        assert text in result.stdout


def test_bench_rejects_a_folder_without_idx_files(tmp_path):
    result = run_kdrun("bench", "--quick", "--data", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("kdrun: error: no MNIST-format IDX files")

"""The fast path gives the same results as the plain path; `kdrun bench --quick` runs. No timing asserts."""

from __future__ import annotations

import math
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import REPO, TINY, kdrun_env, read_summary, run_kdrun
from kdrun.bench.reference import loaders, train_reference
from kdrun.data import DATASETS, make_splits
from kdrun.data.batches import InMemoryBatches
from kdrun.errors import ConfigError
from kdrun.methods import CrossEntropy, FrozenTeacher
from kdrun.models import build_model
from kdrun.training import loop
from kdrun.training.loop import PhaseSettings, train_phase
from kdrun.training.run_files import Observers
from kdrun.training.speed import FastDropout, resolve_speed, use_fast_dropout

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


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_fast_path_and_reference_reach_the_same_accuracy(dropout):
    """Same model init, data, epochs, batch size and lr: accuracy agrees within noise of batch order.

    With dropout, kdrun's side uses FastDropout (as every CPU run does) and the reference nn.Dropout.
    """
    data = digits()
    torch.manual_seed(0)
    ours = resolve_speed("fp32", "auto", False, CPU).prepare(build_model("mlp", data.input_shape, 10, hidden=[64], dropout=dropout))
    torch.manual_seed(0)
    theirs = build_model("mlp", data.input_shape, 10, hidden=[64], dropout=dropout)
    assert any(type(module) is FastDropout for module in ours.modules()) == (dropout > 0)
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
    assert "teacher logits loaded from the cache" in second.stderr
    assert read_summary(second_dir)["status"] == "completed"


def test_a_checkpoint_teachers_logits_are_kept_by_file_content(kdrun_in, tmp_path):
    """teacher.checkpoint has no teacher cache entry; its logits are kept under the file's content hash."""
    trained, trained_dir = kdrun_in(*TINY, run_name="trained")
    weights = Path(read_summary(trained_dir)["phases"]["teacher"]["weights"])
    copied, changed = tmp_path / "copy.safetensors", tmp_path / "changed.safetensors"
    shutil.copy(weights, copied)
    tensors = load_file(str(weights))
    save_file({name: value + 0.01 if name.endswith("bias") else value for name, value in tensors.items()}, str(changed))
    runs = {name: kdrun_in(*TINY, f"teacher.checkpoint={path}", "independent=false", run_name=name)
            for name, path in (("original", weights), ("copy", copied), ("changed", changed))}
    assert all(result.returncode == 0 for result, _ in runs.values()), [result.stderr for result, _ in runs.values()]
    assert "teacher logits computed" in runs["original"][0].stderr
    assert "teacher logits loaded from the cache" in runs["copy"][0].stderr  # same content at another path
    assert "teacher logits computed" in runs["changed"][0].stderr
    distilled = [read_summary(run_dir)["phases"]["distilled"] for _, run_dir in runs.values()]
    assert distilled[0]["test_acc"] == distilled[1]["test_acc"] and distilled[0]["best_val_acc"] == distilled[1]["best_val_acc"]


def test_bench_quick_runs_and_prints_ratios(tmp_path):
    result = run_kdrun("bench", "--quick", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for text in ("speed-up", "end to end", "GFLOP/s", "GB/s memory", "% of floor", "peak memory", "uint8", "a further run of the same study"):
        assert text in result.stdout


def test_bench_rejects_a_folder_without_idx_files(tmp_path):
    result = run_kdrun("bench", "--quick", "--data", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("kdrun: error: no MNIST-format IDX files")


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_fast_dropout_keeps_each_value_with_probability_1_minus_p_scaled_like_nn_dropout(p):
    inputs = torch.ones(1000, 1000)
    torch.manual_seed(0)
    outputs = FastDropout(p)(inputs)
    kept = outputs != 0
    sigma = math.sqrt(p * (1 - p) / inputs.numel())  # binomial standard deviation of the kept fraction
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * sigma
    assert torch.allclose(outputs[kept], torch.full_like(outputs[kept], 1 / (1 - p)))


def test_fast_dropout_gradient_is_the_mask_times_the_scale_and_eval_is_identity():
    inputs = torch.randn(64, 50, requires_grad=True)
    layer = FastDropout(0.3)
    outputs = layer(inputs)
    outputs.sum().backward()
    expected = (outputs != 0).float() / 0.7
    assert torch.allclose(inputs.grad, expected)
    assert torch.equal(layer.eval()(inputs), inputs)
    assert torch.equal(FastDropout(0.0)(inputs), inputs)
    assert torch.count_nonzero(FastDropout(1.0)(inputs)) == 0


def test_fast_dropout_same_seed_same_mask_and_bf16_inputs_keep_their_dtype_and_rate():
    inputs = torch.ones(500, 500, dtype=torch.bfloat16)
    torch.manual_seed(3)
    first = FastDropout(0.3)(inputs)
    torch.manual_seed(3)
    assert torch.equal(first, FastDropout(0.3)(inputs))
    assert first.dtype == torch.bfloat16
    sigma = math.sqrt(0.3 * 0.7 / inputs.numel())
    assert abs((first != 0).float().mean().item() - 0.7) < 5 * sigma  # float32 draws: p is not rounded to bf16


def test_use_fast_dropout_replaces_only_plain_dropout_and_keeps_the_state_dict():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2), nn.Sequential(nn.Dropout(0.4), nn.Dropout2d(0.5)))
    keys = list(model.state_dict())
    assert use_fast_dropout(model) == 2
    assert type(model[1]) is FastDropout and model[1].p == 0.2
    assert type(model[2][0]) is FastDropout and model[2][0].p == 0.4
    assert type(model[2][1]) is nn.Dropout2d
    assert list(model.state_dict()) == keys


def test_fast_dropout_setting_resolves_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_speed("fp32", "auto", False, cpu).fast_dropout
    assert not resolve_speed("fp32", "auto", False, cpu, False).fast_dropout
    assert not resolve_speed("fp32", "auto", False, cuda, True).fast_dropout  # GPUs keep their fused kernel
    with pytest.raises(ConfigError, match="fast_dropout"):
        resolve_speed("fp32", "auto", False, cpu, "yes")
    model = resolve_speed("fp32", "auto", False, cpu).prepare(build_model("mlp", (1, 8, 8), 10, hidden=[8], dropout=0.5))
    assert any(type(module) is FastDropout for module in model.modules())


@pytest.mark.parametrize("val_accuracies, test_passes", [([0.5, 0.7, 0.9], 1), ([0.5, 0.9, 0.7], 2)])
def test_the_test_split_is_evaluated_once_when_the_best_epoch_is_the_last(monkeypatch, val_accuracies, test_passes):
    data = digits()
    splits = {split: InMemoryBatches(getattr(data, split), data.mean, data.std, 64, CPU, split == "train") for split in ("train", "val", "test")}
    scripted, test_calls = iter(val_accuracies), []

    def fake_evaluate(model, batches):
        if batches is splits["test"]:
            test_calls.append(model[1].weight.detach().clone())
            return 0.5
        return next(scripted)

    monkeypatch.setattr(loop, "evaluate", fake_evaluate)
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, 10, hidden=[8])
    settings = PhaseSettings(3, lambda parameters: torch.optim.Adam(parameters, lr=1e-3))
    result = train_phase("t", model, CrossEntropy(), splits["train"], splits["val"], splits["test"], settings, Observers([]))
    assert len(test_calls) == test_passes and result.best_epoch == val_accuracies.index(max(val_accuracies)) + 1
    if test_passes == 2:  # last weights first, then the best-validation weights, which the model keeps
        assert not torch.equal(test_calls[0], test_calls[1])
        assert torch.equal(test_calls[1], model[1].weight)


MMAPPED_BLOCKS_FOR_A_16_MIB_MALLOC = """
import ctypes, sys, torch
from kdrun.training.speed import reuse_freed_host_memory

class MallInfo2(ctypes.Structure):  # glibc >= 2.33
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
if sys.argv[1] == "tuned":
    assert reuse_freed_host_memory()
for _ in range(3):  # a training-like history: weight-sized tensors allocated, written and freed
    tensor = torch.empty(6 << 20, dtype=torch.uint8).fill_(1)
    del tensor
before = libc.mallinfo2().hblks
block = libc.malloc(16 << 20)
print(libc.mallinfo2().hblks - before)
libc.free(ctypes.c_void_p(block))
"""


def glibc_version() -> tuple[int, ...]:
    name, version = platform.libc_ver()
    return tuple(int(part) for part in version.split(".")) if platform.system() == "Linux" and name == "glibc" else ()


@pytest.mark.skipif(glibc_version() < (2, 33), reason="glibc's mallopt, and mallinfo2 (glibc >= 2.33) to count mappings")
def test_reused_host_memory_serves_weight_sized_blocks_from_the_heap_not_fresh_mappings():
    """A fresh mapping per step means page faults per step; after tuning glibc serves 16 MiB from its heap.

    Counted with mallinfo2 (mapped blocks), not page faults, which vary with the heap layout of each process.
    """

    def mapped_blocks(mode: str) -> int:
        command = [sys.executable, "-c", MMAPPED_BLOCKS_FOR_A_16_MIB_MALLOC, mode]
        return int(subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout)

    assert mapped_blocks("default") == 1
    assert mapped_blocks("tuned") == 0


@pytest.mark.parametrize("setting", ["trainer.fast_dropout=false", "trainer.flush_denormal=false"])
def test_teacher_cache_tells_runs_with_other_cpu_numerics_apart(kdrun_in, setting):
    kdrun_in(*TINY, run_name="fast")
    other, _ = kdrun_in(*TINY, setting, run_name="other")
    assert other.returncode == 0, other.stderr
    assert "teacher: trained and stored in cache" in other.stderr


SUBNORMALS_LEFT_AFTER_FLUSHING = """
import sys, torch
from kdrun.training.speed import flush_subnormals, subnormals_left
if sys.argv[1] == "pool first":  # a parallel op starts torch's intra-op threads before the flags are set
    print(subnormals_left() > 0, end=" ")  # without the flags, subnormals survive
print(flush_subnormals(), subnormals_left())
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="FTZ/DAZ flags are x86's")
def test_subnormals_are_flushed_on_every_thread_and_the_check_sees_when_they_are_not():
    def run(mode: str) -> str:
        command = [sys.executable, "-c", SUBNORMALS_LEFT_AFTER_FLUSHING, mode]
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout.split()

    assert run("flags first") == ["True", "0"]
    if torch.get_num_threads() > 1:  # with one thread there is no other thread to miss
        before, effective, left = run("pool first")
        assert before == "True" and effective == "False" and int(left) > 0


def test_flush_denormal_setting_resolves_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_speed("fp32", "auto", False, cpu).flush_denormal
    assert not resolve_speed("fp32", "auto", False, cpu, "auto", False).flush_denormal
    assert not resolve_speed("fp32", "auto", False, cuda, "auto", True).flush_denormal
    with pytest.raises(ConfigError, match="flush_denormal"):
        resolve_speed("fp32", "auto", False, cpu, "auto", "sometimes")


def test_the_switch_bench_times_every_switch_both_ways(tmp_path):
    """`kdrun bench --switches`: each switch's steps run on and off (a few steps here; the bench times 200)."""
    code = ("from kdrun.bench import switches as s\n"
            "s.TIMED_STEPS, s.BORDER_STEPS = 3, 1\n"
            "s.WORKLOADS = {name: (model, lr, 2, bf16) for name, (model, lr, _, bf16) in s.WORKLOADS.items()}\n"
            "print(sorted(s.WORKLOADS), [len(s.step_times(name, on)) for name in sorted(s.WORKLOADS) for on in (True, False)])\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=kdrun_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("['fast_dropout', 'fast_step', 'flush_denormal', 'host_memory', 'host_memory_bf16'] "
                                     "[3, 3, 3, 3, 3, 3, 3, 3, 3, 3]")


def test_the_switch_bench_report_reads_its_measurements(capsys):
    from kdrun.bench import switches

    one = {"cpu_ms": 1.0, "wall_ms": 2.0, "faults": 3}
    switches.report({name: {"on": [one], "off": [{**one, "cpu_ms": 1.5}]} for name in switches.WORKLOADS})
    out = capsys.readouterr().out
    assert "1.50x" in out and "3 / 3" in out and "fast_step" in out

"""torchrun: two CPU processes (gloo) give one run dir and the single-process results; failures end the run.

The end-to-end tests start `python -m torch.distributed.run --nproc_per_node=2 --standalone -m kdrun
train ...` in a subprocess, exactly what a user types (torchrun == python -m torch.distributed.run).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY, read_metrics, read_summary, run_kdrun
from kdrun import parallel
from kdrun.data.base import Split
from kdrun.data.batches import InMemoryBatches
from kdrun.data.sharded import ShardedBatches
from kdrun.training import ddp

# Small but real: digits, 600 training samples (600 % 32 = 24: the last batch splits 12/12), no dropout
# so that the only difference between the runs is the order of floating point sums.
SMALL = [*TINY, "dataset.max_train_samples=600", "teacher.hidden=[64]", "teacher.dropout=0", "student.dropout=0"]
# Measured: identical accuracies, epoch losses equal to ~1e-7 relative (docs/distributed.md). Allowed: one
# test sample of accuracy, 1e-4 relative on losses (summation order may flip one borderline prediction).


def torchrun(*arguments: str, cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("HYDRA_FULL_ERROR", "KDRUN_USER_HYDRA_FULL_ERROR")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra_env or {})
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "kdrun", "train"]
    return subprocess.run([*command, *arguments], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_write_one_run_matching_the_single_process_run(tmp_path):
    """No hydra.run.dir: each rank composes its own ${now:...}; rank 0's directory must be the only one."""
    result = torchrun(*SMALL, f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = [path.parent for path in (tmp_path / "outputs" / "runs").glob("*/*/summary.json")]
    assert len(run_dirs) == 1 and len(list((tmp_path / "outputs" / "runs").glob("*/*"))) == 1
    parallel = run_dirs[0]
    assert read_summary(parallel)["status"] == "completed"
    assert result.stdout.count("kdrun: digits (completed)") == 1  # printed by rank 0 only
    for kind in ("teachers", "students"):  # one entry each, stored once (no other rank's staging folders)
        entries = [path.name for path in (tmp_path / "cache" / kind).iterdir() if not path.name.endswith(".lock")]
        assert len(entries) == 1 and not entries[0].startswith("."), entries

    single_result = run_kdrun("train", *SMALL, f"hydra.run.dir={tmp_path / 'single'}", f"cache_dir={tmp_path / 'cache1'}",
                              cwd=tmp_path, extra_env={"OMP_NUM_THREADS": "1"})
    assert single_result.returncode == 0, single_result.stderr[-3000:]
    single = tmp_path / "single"
    test_size = read_summary(single)["dataset"]["test"]
    for phase in ("teacher", "independent", "distilled"):
        for field in ("test_acc", "test_acc_last", "best_val_acc"):
            expected, got = read_summary(single)["phases"][phase][field], read_summary(parallel)["phases"][phase][field]
            assert abs(got - expected) <= 1 / test_size + 1e-9, (phase, field, got, expected)
    parallel_lines, single_lines = read_metrics(parallel), read_metrics(single)
    assert len(parallel_lines) == len(single_lines) == 6
    for got, expected in zip(parallel_lines, single_lines):
        for name, value in expected["loss"].items():
            assert math.isclose(got["loss"][name], value, rel_tol=1e-4), (got, expected)


def test_a_failing_rank_ends_the_run_non_zero_without_a_completed_summary(tmp_path):
    run_dir = tmp_path / "run"
    result = torchrun(*TINY, f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path,
                      extra_env={ddp.FAIL_RANK_ENV: "1"})
    assert result.returncode != 0
    assert "kdrun: error: rank 1 of 2: rank 1 failed on purpose" in result.stderr
    summaries = [json.loads(path.read_text()) for path in tmp_path.rglob("summary.json")]
    assert all(summary["status"] != "completed" for summary in summaries)
    assert not (run_dir / "distilled.safetensors").exists()


LEFTOVER_WRAPPERS = """
import gc
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from kdrun import parallel

class Holder:  # a reference cycle around a DDP wrapper, as training leaves behind
    pass

with parallel.session():
    holder = Holder()
    holder.itself, holder.wrapper = holder, DistributedDataParallel(nn.Linear(2, 2))
    del holder
alive = sum(isinstance(thing, DistributedDataParallel) for thing in gc.get_objects())
rank = parallel.environment_rank()
with open(f"rank{rank}.txt", "w") as stream:  # a file per rank: the ranks' stdout lines can interleave
    stream.write(f"rank {rank}: {alive} DDP wrappers alive")
"""


def test_session_frees_ddp_wrappers_before_the_process_group_ends(tmp_path):
    """A DDP wrapper left in a reference cycle used to be freed at interpreter exit, after the process group:
    gloo then aborted that rank ("terminate called without an active exception") in ~1 of 6 torchrun runs."""
    script = tmp_path / "leftover.py"
    script.write_text(LEFTOVER_WRAPPERS)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(script)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)] == [
        "rank 0: 0 DDP wrappers alive", "rank 1: 0 DDP wrappers alive"]


def shards(count: int, batch_size: int, world_size: int, shuffle: bool) -> list[ShardedBatches]:
    """Each rank's ShardedBatches over the same split, built as that rank would (no process group needed)."""
    split = Split(torch.zeros(count, 1, 2, 2, dtype=torch.uint8), torch.arange(count) % 10)
    return [ShardedBatches(split, [0.0], [1.0], batch_size, torch.device("cpu"), shuffle, seed=3,
                           topology=parallel.Topology(rank, world_size, rank)) for rank in range(world_size)]


@pytest.mark.parametrize("count, batch_size, world_size", [(100, 32, 2), (101, 32, 2), (100, 30, 3), (98, 32, 4)])
def test_rank_shards_of_each_epoch_are_the_single_process_batches(count, batch_size, world_size):
    ranks = shards(count, batch_size, world_size, shuffle=True)
    split = Split(torch.zeros(count, 1, 2, 2, dtype=torch.uint8), torch.arange(count) % 10)
    single = InMemoryBatches(split, [0.0], [1.0], batch_size, torch.device("cpu"), True, seed=3)
    assert len({len(batches) for batches in ranks}) == 1  # DDP: every rank takes the same number of steps
    for epoch in range(2):  # reshuffled every epoch, identically on every rank
        per_rank = [[batch.indices.tolist() for batch in batches] for batches in ranks]
        expected = [batch.indices.tolist() for batch in single]
        steps = len(ranks[0])
        for step in range(steps):
            union = [index for rank in per_rank for index in rank[step]]
            assert union == expected[step], (epoch, step)
            assert min(len(rank[step]) for rank in per_rank) >= 2
        seen = sum(len(rank[step]) for rank in per_rank for step in range(steps))
        assert seen == ranks[0].num_samples >= count - (2 * world_size - 1)


def test_evaluation_shares_cover_the_split_once():
    ranks = shards(7, 4, 3, shuffle=False)
    indices = sorted(index for batches in ranks for batch in batches for index in batch.indices.tolist())
    assert indices == list(range(7)) and all(batches.num_samples == 7 for batches in ranks)


def test_single_process_helpers_are_no_ops():
    assert not parallel.is_active() and parallel.is_main()
    tensor = torch.tensor([3.0])
    assert parallel.all_reduce_sum(tensor) is tensor
    assert parallel.broadcast_object("x") == "x"
    objective = torch.nn.Identity()
    assert ddp.synchronised(torch.nn.Linear(1, 1), objective) is objective


needs_submitit = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
    reason="hydra-submitit-launcher is not installed (pip install 'kdrun[slurm]')",
)


@needs_submitit
def test_slurm_launcher_config_composes_without_a_cluster(tmp_path):
    result = run_kdrun("train", "hydra/launcher=kdrun_slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    launcher = result.stdout.split("  launcher:\n", 1)[1].split("\n  sweeper:", 1)[0]
    assert "_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in launcher
    for line in ("tasks_per_node: 1", "gpus_per_node: 1", "partition: gpu", "submitit_folder: ${hydra.sweep.dir}/.submitit/%j"):
        assert line in launcher
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow  # ~30 s of process starts on 2 cores (submitit runs every job in a fresh interpreter)
@needs_submitit
def test_submitit_jobs_train_the_teacher_once(tmp_path):
    """submitit's local executor runs each job in its own process, as SLURM would on other nodes:
    the cache lock makes exactly one job train the teacher and the independent student."""
    sweep = tmp_path / "sweep"
    result = run_kdrun(
        "train", "-m", "hydra/launcher=submitit_local", "T=2,4", "teacher_epochs=1", "student_epochs=1",
        "trainer.progress=false", "dataset.max_train_samples=200", "teacher.hidden=[16]",
        f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (sweep / "sweep.jsonl").read_text().splitlines()]
    assert sorted(row["status"] for row in rows) == ["completed", "completed"]
    for phase in ("teacher", "independent"):
        assert sorted(row[f"{phase}_source"] for row in rows) == ["cache", "trained"]

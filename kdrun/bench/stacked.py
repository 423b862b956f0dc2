"""`kdrun bench --stacked`: a 3x3 alpha x T sweep under each launcher, side by side in one call.

Each sweep is a real `kdrun train -m` in its own process, timed from start to exit:
- cold: a fresh cache, so the first job trains the teacher and the independent student (end to end);
- warm: the same sweep again on that cache, so only the distilled students train (what every later
  sweep over the same teacher costs);
- students: the distilled phase's own seconds from the summaries (sequential: summed over the jobs;
  stacked: the one stacked pass; joblib: not separable, its jobs overlap).
Launchers: Hydra's basic one (sequential), joblib (2 jobs at once) and kdrun_stacked. Every job runs
with trainer.threads=1, so the sequential and stacked sweeps use one core and joblib two: on shared
cores a second thread per job mostly spin-waits. `--memory` measures the peak memory of K stacked
students instead (one process per K). Nothing is stored; numbers are measured on every call.
"""

from __future__ import annotations

import copy
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LAUNCHERS = {"sequential": ["hydra/launcher=basic"], "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
             "stacked": ["hydra/launcher=kdrun_stacked"]}
SWEEP = ["alpha=0.1,0.5,0.9", "T=2,4,8"]
# mnist_mlp's student; a small CNN under the same teacher (without the preset's MLP options)
STUDENTS = {"mlp": [], "tiny_cnn": ["student=tiny_cnn", "~student.dropout", "~student.hidden"]}


def measure(workload: list[str], launchers: list[str], students: list[str]) -> list[dict[str, Any]]:
    """One row per (student, launcher): cold and warm wall seconds, the students' seconds, the test accuracies."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="kdrun-bench-stacked-") as scratch:
        for student in students:
            for launcher in launchers:
                folder = Path(scratch) / student / launcher
                common = [*workload, *STUDENTS[student], *SWEEP, *LAUNCHERS[launcher], f"cache_dir={folder / 'cache'}"]
                cold, summaries = timed_sweep(common, folder / "cold")
                warm, _ = timed_sweep(common, folder / "warm")
                rows.append({"student": student, "launcher": launcher, "cold": cold, "warm": warm,
                             "students": students_seconds(launcher, summaries),
                             "test_acc": sorted(summary["phases"]["distilled"]["test_acc"] for summary in summaries)})
    return rows


def timed_sweep(overrides: list[str], sweep_dir: Path) -> tuple[float, list[dict[str, Any]]]:
    """Wall seconds of `kdrun train -m ...` and the summaries it wrote.

    Raises:
        RuntimeError: when the sweep fails (its last stderr lines).
    """
    command = [sys.executable, "-m", "kdrun", "train", "-m", *overrides, "trainer.progress=false", "trainer.threads=1",
               f"hydra.sweep.dir={sweep_dir}"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"sweep failed: {' '.join(command)}\n{result.stderr[-2000:]}")
    return seconds, [json.loads(path.read_text()) for path in sorted(sweep_dir.rglob("summary.json"))]


def students_seconds(launcher: str, summaries: list[dict[str, Any]]) -> float | None:
    distilled = [summary["phases"]["distilled"] for summary in summaries]
    if launcher == "joblib":
        return None
    if launcher == "stacked":  # every member of a stack records the one stacked pass
        passes = {row["seconds"] for row in distilled if row.get("stacked")}
        return sum(passes) + sum(row["seconds"] for row in distilled if not row.get("stacked"))
    return sum(row["seconds"] for row in distilled)


def report(rows: list[dict[str, Any]], description: str, cpu: str) -> None:
    """The table, with each launcher's speed-up over the sequential sweep of the same student."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"kdrun bench --stacked: 3x3 alpha x T sweep of mnist_mlp on {description}", title_justify="left")
    for column in ("student", "launcher", "cold s", "x", "warm s", "x", "students s", "x", "distilled test acc (min-max)"):
        table.add_column(column, justify="left" if column in ("student", "launcher") else "right")
    for row in rows:
        base = next(other for other in rows if other["student"] == row["student"] and other["launcher"] == "sequential")
        students = row["students"]
        table.add_row(row["student"], row["launcher"], f"{row['cold']:.1f}", ratio(base["cold"], row["cold"]), f"{row['warm']:.1f}",
                      ratio(base["warm"], row["warm"]), "-" if students is None else f"{students:.1f}",
                      "-" if students is None else ratio(base["students"], students),
                      f"{row['test_acc'][0]:.4f}-{row['test_acc'][-1]:.4f}")
    console = Console(width=max(Console().width, 130))
    console.print(table)
    for row in rows:
        if row["launcher"] == "sequential":
            console.print(f"{row['student']}: {bound_line(row)}", highlight=False)
    console.print(f"cold = end to end with the teacher and independent student trained; warm = the same sweep on their cache; "
                  f"students = the distilled phases' own seconds. One thread per job (joblib: 2 jobs at once). CPU: {cpu}",
                  highlight=False)


def bound_line(sequential: dict[str, Any]) -> str:
    """The end-to-end speed-up of a launcher whose students took no time at all (Amdahl's bound).

    Everything but the distilled phases (process start, Hydra composing every job twice, the teacher
    and independent student, each job's data loading and files) is the same under every launcher, so
    no way of training the students can make the sweep faster than this.
    """
    students = sequential["students"]
    cold, warm = (sequential[key] / max(sequential[key] - students, 1e-9) for key in ("cold", "warm"))
    return (f"if its students took 0 s, a sweep would be at most {cold:.2f}x (cold) / {warm:.2f}x (warm) faster: "
            f"the other {sequential['warm'] - students:.1f}s of the warm sweep are the same under every launcher")


def ratio(base: float | None, value: float | None) -> str:
    return f"{base / value:.2f}x" if base and value else "-"


def peak_memory(students: int, steps: int = 50) -> dict[str, float]:
    """Peak RSS (MB) of training `students` stacked mnist_mlp students for `steps` steps, over the process before."""
    import torch

    from kdrun.data.base import Split
    from kdrun.data.batches import InMemoryBatches
    from kdrun.methods import METHODS, FrozenTeacher
    from kdrun.models import build_model
    from kdrun.training.loop import PhaseSettings
    from kdrun.training.speed import use_fast_dropout
    from kdrun.training.stacked.loop import train_stacked

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    count = steps * 32
    split = Split(torch.randint(0, 256, (count, 1, 28, 28), dtype=torch.uint8, generator=generator),
                  torch.randint(0, 10, (count,), generator=generator))
    batches = InMemoryBatches(split, [0.13], [0.31], 32, torch.device("cpu"), True)
    evaluation = InMemoryBatches(split, [0.13], [0.31], 1024, torch.device("cpu"), False)
    teacher = FrozenTeacher(build_model("mlp", (1, 28, 28), 10, hidden=[1200, 1200]))
    teacher.cache_logits(evaluation, count)
    models = []
    for _ in range(students):
        model = build_model("mlp", (1, 28, 28), 10, hidden=[20, 20], dropout=0.5)
        use_fast_dropout(model)
        models.append(model)
    objectives = []
    for index in range(students):
        objective = METHODS.build("weighted", FrozenTeacher(teacher.model), 2.0 + index, 0.5)
        objective.teacher.cached_logits = teacher.cached_logits
        objectives.append(objective)
    settings = PhaseSettings(1, lambda parameters: torch.optim.Adam(parameters, lr=1e-4, fused=True))
    small = Split(split.images[:64], split.labels[:64])  # warm-up: torch's lazy imports (the optimizer's load torch._dynamo)
    train_stacked("distilled", [copy.deepcopy(models[0])], objectives[:1], InMemoryBatches(small, [0.13], [0.31], 32, torch.device("cpu"), True),
                  InMemoryBatches(small, [0.13], [0.31], 64, torch.device("cpu"), False),
                  InMemoryBatches(small, [0.13], [0.31], 64, torch.device("cpu"), False), settings)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    train_stacked("distilled", models, objectives, batches, evaluation, evaluation, settings)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"students": students, "before_mb": before, "peak_mb": after, "added_mb": after - before, "seconds": seconds}


def memory_rows(sizes: tuple[int, ...] = (1, 3, 9, 27)) -> list[dict[str, float]]:
    """peak_memory for each K, each in a fresh process (peak RSS only grows within one)."""
    rows = []
    for size in sizes:
        code = f"import json; from kdrun.bench.stacked import peak_memory; print(json.dumps(peak_memory({size})))"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.splitlines()[-1]))
    return rows


def report_memory(rows: list[dict[str, float]], cpu: str) -> None:
    print(f"peak memory of K stacked mnist_mlp students (784-20-20-10, batch 32, 50 steps + evaluation), one process per K; CPU: {cpu}")
    for row in rows:
        print(f"  K={row['students']:>3}: peak RSS {row['peak_mb']:.0f} MB, {row['added_mb']:+.1f} MB over the process before "
              f"training (data, teacher logits, models), {row['seconds']:.2f}s")

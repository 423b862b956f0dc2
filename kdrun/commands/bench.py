"""`kdrun bench [--quick]`: kdrun's path vs a plain PyTorch reference, same recipe, one process.

Prints per phase and end to end: seconds, samples/s, test accuracy, the speed-up (reference
seconds / kdrun seconds), the machine's measured matmul throughput and each phase's fraction of
the compute floor (model FLOPs / that throughput). Numbers are measured on every call, never stored.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from kdrun.cli import fail

SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def main(arguments: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="kdrun bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small workload (2,000 training images) for CI")
    parser.add_argument("--data", type=Path, help="folder with MNIST-format IDX files (default: auto-detect)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per phase (default 1)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="kdrun's precision on CPU (default fp32)")
    options = parser.parse_args(arguments)
    if options.epochs < 1:
        fail(f"--epochs {options.epochs} must be >= 1 (try --epochs 1)", 2)
    import torch

    from kdrun.errors import KdrunError

    torch.set_num_threads(torch.get_num_threads())
    try:
        report(*measure(options))
    except KdrunError as error:
        fail(error.one_line(), error.exit_code)


def workload_overrides(options: argparse.Namespace) -> tuple[list[str], str]:
    """The R4 preset on real MNIST when present, else Fashion-MNIST (Debian), else digits."""
    budget = [
        f"teacher_epochs={options.epochs}", f"student_epochs={options.epochs}", "trainer.progress=false",
        f"trainer.precision={options.precision}",
    ]
    quick = ["dataset.max_train_samples=2000"] if options.quick else []
    from kdrun.data.idx import find_idx_files

    candidates = [(options.data, "MNIST-format data")] if options.data else [(SHARED_MNIST, "real MNIST"), (DEBIAN_FASHION, "Fashion-MNIST")]
    for root, name in candidates:
        if find_idx_files(Path(root)) is not None:
            return ["experiment=mnist_mlp", f"dataset.root={root}", "dataset.download=false", *budget, *quick], f"{name} in {root}"
    if options.data is not None:
        raise_missing(options.data)
    return ["experiment=mnist_mlp", "dataset=digits", *budget], "digits (no MNIST-format data found)"


def raise_missing(root: Path) -> None:
    from kdrun.errors import ConfigError

    raise ConfigError(f"no MNIST-format IDX files under {root}", "pass a folder with train-/t10k- images and labels")


def measure(options: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]:
    """Run kdrun's path, then the reference, on the same data split and models."""
    import torch
    from hydra import compose, initialize_config_dir

    from kdrun.config import config_dir, register_schema
    from kdrun.training.pipeline import Run
    from kdrun.training.run_files import Observers

    overrides, description = workload_overrides(options)
    register_schema()
    with tempfile.TemporaryDirectory(prefix="kdrun-bench-") as scratch:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("config", overrides=[*overrides, f"cache_dir={scratch}/cache", "device=cpu"])
        started = time.perf_counter()
        run = Run(cfg, Path(scratch), Observers([]))
        run.execute()
        kdrun_total = time.perf_counter() - started
        kdrun_peak = peak_memory_mb()
        reference = run_reference(cfg, run)
    machine = {
        "gflops": matmul_gflops(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "peak_mb_kdrun": kdrun_peak,
        "peak_mb_both": peak_memory_mb(),
    }
    kdrun = {**run.phases, "total": kdrun_total}
    return kdrun, reference, {**machine, **flop_floors(cfg, run)}, description


def run_reference(cfg: Any, run: Any) -> dict[str, Any]:
    """The plain loop over the SAME split, models (same seed, same initial weights) and budget."""
    import torch

    from kdrun.bench.reference import loaders, train_reference
    from kdrun.models import build_model
    from kdrun.training.pipeline import plain

    started = time.perf_counter()
    train, test = loaders(run.data, cfg.batch_size, cfg.seed)

    def model(group: Any) -> torch.nn.Module:
        options = plain(group)
        options.pop("checkpoint", None)
        torch.manual_seed(cfg.seed)
        return build_model(options.pop("name"), run.data.input_shape, run.data.num_classes, **options)

    teacher = model(cfg.teacher)
    phases = {"teacher": train_reference(teacher, train, test, cfg.teacher_epochs, cfg.lr)}
    phases["independent"] = train_reference(model(cfg.student), train, test, cfg.student_epochs, cfg.lr)
    teacher.eval()
    kd_scale = cfg.T**2 if cfg.method.get("scale_by_T2", True) else 1.0
    phases["distilled"] = train_reference(
        model(cfg.student), train, test, cfg.student_epochs, cfg.lr,
        teacher=teacher, temperature=cfg.T, ce_weight=1 - cfg.alpha, kd_weight=cfg.alpha * kd_scale,
    )
    results = {name: {"seconds": p.seconds, "test_acc": p.test_acc, "samples": p.samples} for name, p in phases.items()}
    return {**results, "total": time.perf_counter() - started}


def flop_floors(cfg: Any, run: Any) -> dict[str, Any]:
    """FLOPs per phase (kdrun's and the reference's), from torch's FLOP counter on the real models."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kdrun.models import build_model
    from kdrun.training.pipeline import plain

    def flops(group: Any, backward: bool) -> float:
        options = plain(group)
        options.pop("checkpoint", None)
        model = build_model(options.pop("name"), run.data.input_shape, run.data.num_classes, **options)
        inputs = torch.randn(32, *run.data.input_shape)
        with FlopCounterMode(display=False) as counter:
            output = model(inputs)
            if backward:
                output.sum().backward()
        return counter.get_total_flops() / 32

    samples = len(run.data.train)
    student, teacher_forward = flops(cfg.student, True), flops(cfg.teacher, False)
    return {
        "flops": {
            "teacher": flops(cfg.teacher, True) * samples * cfg.teacher_epochs,
            "independent": student * samples * cfg.student_epochs,
            "distilled": (student * cfg.student_epochs + teacher_forward) * samples,  # teacher logits once
            "distilled_reference": (student + teacher_forward) * samples * cfg.student_epochs,
        }
    }


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    """The machine's float32 matmul throughput (best of a few timings), in GFLOP/s."""
    import torch

    left, right = torch.randn(size, size), torch.randn(size, size)
    torch.mm(left, right)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            torch.mm(left, right)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 * repeats / best / 1e9


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(kdrun: dict[str, Any], reference: dict[str, Any], machine: dict[str, Any], description: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"kdrun bench: R4 recipe (mnist_mlp) on {description}", title_justify="left")
    for column in ("phase", "reference s", "kdrun s", "speed-up", "ref samples/s", "kdrun samples/s", "ref acc", "kdrun acc", "kdrun % of floor"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    floor = machine["flops"]
    for phase in ("teacher", "independent", "distilled"):
        ours = kdrun[phase]["seconds"] + kdrun[phase].get("teacher_logits_seconds", 0.0)
        theirs = reference[phase]["seconds"]
        samples = reference[phase]["samples"]
        floor_seconds = floor[phase] / (machine["gflops"] * 1e9)
        table.add_row(
            phase, f"{theirs:.2f}", f"{ours:.2f}", f"{theirs / ours:.2f}x", f"{samples / theirs:,.0f}", f"{samples / ours:,.0f}",
            f"{reference[phase]['test_acc']:.4f}", f"{kdrun[phase]['test_acc']:.4f}", f"{100 * floor_seconds / ours:.1f}%",
        )
    table.add_row("end to end", f"{reference['total']:.2f}", f"{kdrun['total']:.2f}", f"{reference['total'] / kdrun['total']:.2f}x", "", "", "", "", "")
    console = Console(width=max(Console().width, 130))
    console.print(table)
    logits_pass = kdrun["distilled"].get("teacher_logits_seconds", 0.0)
    distilled = kdrun["distilled"]["seconds"] + logits_pass
    independent = kdrun["independent"]["seconds"]
    console.print(
        f"distilled / independent time: kdrun {distilled / independent:.2f}x "
        f"({kdrun['distilled']['seconds'] / independent:.2f}x without the one-off teacher-logits pass of {logits_pass:.2f}s, "
        f"which the teacher cache keeps for every later run), "
        f"reference {reference['distilled']['seconds'] / reference['independent']['seconds']:.2f}x\n"
        f"machine: {machine['gflops']:.1f} GFLOP/s float32 matmul (1024^3), {machine['threads']} threads, torch {machine['torch']}\n"
        f"peak memory (RSS): {machine['peak_mb_kdrun']:.0f} MB after kdrun's path, {machine['peak_mb_both']:.0f} MB after both",
        highlight=False,
    )

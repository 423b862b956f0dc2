"""`kdrun bench [--quick]`: kdrun's path vs a plain PyTorch reference, same recipe, one process.

Prints per phase and end to end: seconds, samples/s, test accuracy, the speed-up (reference
seconds / kdrun seconds), and how close each side gets to the phase's hardware floor (the larger of
its FLOPs at the measured matmul rate and its optimizer-state bytes at the measured memory
bandwidth, kdrun/bench/machine.py). Numbers are measured on every call, never stored.

Fairness: once-per-process costs are paid before either side is timed; kdrun runs first and the
reference second in the same process, so any process-wide setting kdrun makes (its allocator
setting, flushing subnormal floats) also helps the reference: the ratio errs against kdrun, never for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from kdrun.errors import ConfigError

DATA_ENV = "KDRUN_BENCH_DATA"  # a folder of MNIST-format IDX files, when --data is not given
DEFAULT_MNIST = Path("data/mnist")  # dataset=mnist's default root, relative to the working directory
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package


def main(arguments: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="kdrun bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small workload (2,000 training images) for CI")
    parser.add_argument("--data", type=Path, help=f"folder with MNIST-format IDX files (default: ${DATA_ENV}, else "
                        f"{DEFAULT_MNIST}, else {DEBIAN_FASHION}, else digits)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per phase (default 1)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="kdrun's precision on CPU (default fp32)")
    parser.add_argument("--switches", action="store_true", help="instead: each CPU speed switch on vs off (kdrun/bench/switches.py)")
    parser.add_argument("--repeats", type=int, default=3, help="--switches: processes per side (default 3)")
    options = parser.parse_args(arguments)
    if options.switches:
        from kdrun.bench import switches

        switches.report(switches.measure_switches(options.repeats))
        return
    if options.epochs < 1:
        raise ConfigError(f"--epochs {options.epochs} must be >= 1", "try --epochs 1")
    import torch

    torch.set_num_threads(torch.get_num_threads())
    report(measure(options))


def workload_overrides(options: argparse.Namespace) -> tuple[list[str], str]:
    """The R4 preset on MNIST-format data (--data, $KDRUN_BENCH_DATA, data/mnist), else Fashion-MNIST (Debian), else digits."""
    budget = [
        f"teacher_epochs={options.epochs}", f"student_epochs={options.epochs}", "trainer.progress=false",
        f"trainer.precision={options.precision}",
    ]
    quick = ["dataset.max_train_samples=2000"] if options.quick else []
    from kdrun.data.idx import find_idx_files

    chosen = options.data or (Path(os.environ[DATA_ENV]) if os.environ.get(DATA_ENV) else None)
    candidates = [(chosen, "MNIST-format data")] if chosen else [(DEFAULT_MNIST, "MNIST"), (DEBIAN_FASHION, "Fashion-MNIST")]
    for root, name in candidates:
        if find_idx_files(Path(root)) is not None:
            return ["experiment=mnist_mlp", f"dataset.root={root}", "dataset.download=false", *budget, *quick], f"{name} in {root}"
    if chosen is not None:
        raise ConfigError(f"no MNIST-format IDX files under {chosen}", "pass a folder with train-/t10k- images and labels")
    return ["experiment=mnist_mlp", "dataset=digits", *budget], "digits (no MNIST-format data found)"


def measure(options: argparse.Namespace) -> dict[str, Any]:
    """Warm up, run kdrun's path, then the reference, on the same data split and model initialisations."""
    from hydra import compose, initialize_config_dir

    from kdrun.bench.machine import measure_machine, peak_memory_mb, warm_up
    from kdrun.commands.hydra_app import register
    from kdrun.config import config_dir
    from kdrun.training.from_config import settings_from_config
    from kdrun.training.speed import flush_subnormals

    overrides, description = workload_overrides(options)
    register()
    flush_subnormals()  # what kdrun's CPU runs do first; per thread, so before warm_up starts torch's threads
    warm_up()
    with tempfile.TemporaryDirectory(prefix="kdrun-bench-") as scratch:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("config", overrides=[*overrides, f"cache_dir={scratch}/cache", "device=cpu"])
        started = time.perf_counter()
        settings = settings_from_config(cfg)
        phases, data = timed_run(settings, Path(scratch))
        kdrun: dict[str, Any] = {**phases, "total": time.perf_counter() - started}
        kdrun["further_run"] = further_run(settings, Path(scratch) / "further-run")
        kdrun_peak = peak_memory_mb()
        reference = run_reference(settings, cfg.lr, len(data.train))
    return {
        "description": description, "kdrun": kdrun, "reference": reference, "machine": measure_machine(),
        "work": phase_work(settings, data), "peak_mb_kdrun": kdrun_peak, "peak_mb_both": peak_memory_mb(),
        "dataset_mb": sum(split.images.nbytes for split in (data.train, data.val, data.test)) / (1 << 20),
    }


def timed_run(settings: Any, run_dir: Path) -> tuple[dict[str, Any], Any]:
    """kdrun's pipeline (what `kdrun train` runs, without the console): its phase rows and its data."""
    from kdrun.results import RunProgress
    from kdrun.training.pipeline import run_pipeline
    from kdrun.training.run_files import Observers

    progress = RunProgress()
    context = run_pipeline(settings, run_dir, Observers([]), progress)
    return progress.phases, context.data


def further_run(settings: Any, run_dir: Path) -> float:
    """Seconds of the next run of the same study (another alpha): kdrun's caches hold the teacher, its
    training-set logits and the independent student, so only the distilled student trains."""
    next_point = dataclasses.replace(settings, alpha=0.5 if settings.alpha != 0.5 else 0.9)
    run_dir.mkdir()
    started = time.perf_counter()
    timed_run(next_point, run_dir)
    return time.perf_counter() - started


def run_reference(settings: Any, lr: float, train_samples: int) -> dict[str, Any]:
    """The plain loop: its own data loading, then the SAME split, model initialisations and budget."""
    from kdrun.bench.reference import loaders, train_reference
    from kdrun.training.from_config import load_data

    started = time.perf_counter()
    data = load_data(settings.dataset, settings.seed)  # the same IDX decoding torchvision does, timed on this side too
    if len(data.train) != train_samples:
        raise RuntimeError("the reference and kdrun must train on the same split")  # a bench bug, not user input
    train, test = loaders(data, settings.batch_size, settings.seed)
    teacher = fresh_model(settings, settings.teacher, data)
    phases = {"teacher": train_reference(teacher, train, test, settings.teacher_epochs, lr)}
    student_epochs = settings.student_epochs
    phases["independent"] = train_reference(fresh_model(settings, settings.student, data), train, test, student_epochs, lr)
    teacher.eval()
    kd_scale = settings.T**2 if settings.method.get("scale_by_T2", True) else 1.0
    phases["distilled"] = train_reference(
        fresh_model(settings, settings.student, data), train, test, student_epochs, lr,
        teacher=teacher, temperature=settings.T, ce_weight=1 - settings.alpha, kd_weight=settings.alpha * kd_scale,
    )
    results = {name: {"seconds": p.seconds, "test_acc": p.test_acc, "samples": p.samples} for name, p in phases.items()}
    return {**results, "total": time.perf_counter() - started}


def fresh_model(settings: Any, spec: Any, data: Any) -> Any:
    """A model as kdrun builds it for a phase: seeded with the run's seed, so both sides start from the same weights.

    It keeps plain nn.Dropout: the reference is the recipe as written, without kdrun's speed settings.
    """
    import torch

    from kdrun.training.from_config import build_architecture

    torch.manual_seed(settings.seed)
    return build_architecture(spec, data)


def phase_work(settings: Any, data: Any) -> dict[str, tuple[float, int, int]]:
    """Each phase's (FLOPs, optimizer steps, trained parameters), for the better algorithm (teacher logits once)."""
    from kdrun.bench.machine import flops_per_sample
    from kdrun.models import count_parameters

    input_shape = data.input_shape
    teacher, student = fresh_model(settings, settings.teacher, data), fresh_model(settings, settings.student, data)
    samples = len(data.train)
    steps_per_epoch = -(-samples // settings.batch_size)
    teacher_train, student_train = flops_per_sample(teacher, input_shape, True), flops_per_sample(student, input_shape, True)
    teacher_forward = flops_per_sample(teacher, input_shape, False)
    student_steps = steps_per_epoch * settings.student_epochs
    return {
        "teacher": (teacher_train * samples * settings.teacher_epochs, steps_per_epoch * settings.teacher_epochs,
                    count_parameters(teacher)),
        "independent": (student_train * samples * settings.student_epochs, student_steps, count_parameters(student)),
        "distilled": (student_train * samples * settings.student_epochs + teacher_forward * samples, student_steps,
                      count_parameters(student)),
    }


def report(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from kdrun.bench.machine import training_floor

    kdrun, reference, machine = results["kdrun"], results["reference"], results["machine"]
    floors = {phase: training_floor(machine, *spec) for phase, spec in results["work"].items()}
    table = Table(title=f"kdrun bench: R4 recipe (mnist_mlp) on {results['description']}", title_justify="left")
    columns = ("phase", "reference s", "kdrun s", "speed-up", "ref samples/s", "kdrun samples/s", "ref acc", "kdrun acc",
               "floor s", "ref % of floor", "kdrun % of floor")
    for column in columns:
        table.add_column(column, justify="left" if column == "phase" else "right")
    for phase, floor in floors.items():
        ours = kdrun[phase].seconds + (kdrun[phase].teacher_logits_seconds or 0.0)
        theirs, samples = reference[phase]["seconds"], reference[phase]["samples"]
        table.add_row(
            phase, f"{theirs:.2f}", f"{ours:.2f}", f"{theirs / ours:.2f}x", f"{samples / theirs:,.0f}", f"{samples / ours:,.0f}",
            f"{reference[phase]['test_acc']:.4f}", f"{kdrun[phase].test_acc:.4f}",
            f"{floor.seconds:.2f}", f"{100 * floor.seconds / theirs:.0f}%", f"{100 * floor.seconds / ours:.0f}%",
        )
    table.add_row("end to end", f"{reference['total']:.2f}", f"{kdrun['total']:.2f}", f"{reference['total'] / kdrun['total']:.2f}x",
                  *[""] * (len(columns) - 4))
    console = Console(width=max(Console().width, 150))
    console.print(table)
    console.print(footer(results, floors), highlight=False)


def footer(results: dict[str, Any], floors: dict[str, Any]) -> str:
    kdrun, reference, machine = results["kdrun"], results["reference"], results["machine"]
    logits_pass = kdrun["distilled"].teacher_logits_seconds or 0.0
    independent = kdrun["independent"].seconds
    floor_parts = ", ".join(f"{phase} {f.compute_seconds:.2f} / {f.memory_seconds:.2f}" for phase, f in floors.items())
    return (
        f"distilled / independent time: kdrun {(kdrun['distilled'].seconds + logits_pass) / independent:.2f}x "
        f"({kdrun['distilled'].seconds / independent:.2f}x without the one-off teacher-logits pass of {logits_pass:.2f}s, "
        f"which the teacher cache keeps for every later run), "
        f"reference {reference['distilled']['seconds'] / reference['independent']['seconds']:.2f}x\n"
        f"end to end includes loading the data on both sides; kdrun's also its evaluations, checkpoints and cache writes\n"
        f"a further run of the same study (another alpha): kdrun {kdrun['further_run']:.2f}s end to end (teacher, its logits "
        f"and the independent student from kdrun's caches; only the distilled student trains); "
        f"the recipe as written retrains all three phases every run\n"
        f"floor = max(compute, memory) s: {floor_parts}\n"
        f"machine: {cpu_name()}, {machine.threads} threads, {machine.matmul_gflops:.0f} GFLOP/s float32 matmul (1024^3), "
        f"{machine.bandwidth_gbs:.0f} GB/s memory (stream add), torch {machine.torch_version}\n"
        f"peak memory (RSS): {results['peak_mb_kdrun']:.0f} MB after kdrun's path, {results['peak_mb_both']:.0f} MB after both; "
        f"kdrun holds the dataset as uint8: {results['dataset_mb']:.0f} MB (float32 would be {4 * results['dataset_mb']:.0f} MB)"
    )


def cpu_name() -> str:
    """The CPU model, for the record (Linux: /proc/cpuinfo; elsewhere what platform knows)."""
    import platform

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()

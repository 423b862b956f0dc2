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
        report(measure(options))
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


def measure(options: argparse.Namespace) -> dict[str, Any]:
    """Warm up, run kdrun's path, then the reference, on the same data split and model initialisations."""
    from hydra import compose, initialize_config_dir

    from kdrun.bench.machine import measure_machine, peak_memory_mb, warm_up
    from kdrun.config import config_dir, register_schema
    from kdrun.training.pipeline import Run
    from kdrun.training.run_files import Observers
    from kdrun.training.speed import flush_subnormals

    overrides, description = workload_overrides(options)
    register_schema()
    flush_subnormals()  # what kdrun's CPU runs do first; per thread, so before warm_up starts torch's threads
    warm_up()
    with tempfile.TemporaryDirectory(prefix="kdrun-bench-") as scratch:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("config", overrides=[*overrides, f"cache_dir={scratch}/cache", "device=cpu"])
        started = time.perf_counter()
        run = Run(cfg, Path(scratch), Observers([]))
        run.execute()
        kdrun = {**run.phases, "total": time.perf_counter() - started}
        kdrun["further_run"] = further_run(cfg, Path(scratch) / "further-run")
        kdrun_peak = peak_memory_mb()
        reference = run_reference(cfg, len(run.data.train))
    return {
        "description": description, "kdrun": kdrun, "reference": reference, "machine": measure_machine(),
        "work": phase_work(cfg, run), "peak_mb_kdrun": kdrun_peak, "peak_mb_both": peak_memory_mb(),
        "dataset_mb": sum(split.images.nbytes for split in (run.data.train, run.data.val, run.data.test)) / (1 << 20),
    }


def further_run(cfg: Any, run_dir: Path) -> float:
    """Seconds of the next run of the same study (another alpha): kdrun's caches hold the teacher, its
    training-set logits and the independent student, so only the distilled student trains."""
    from omegaconf import open_dict

    from kdrun.training.pipeline import Run
    from kdrun.training.run_files import Observers

    next_point = cfg.copy()
    with open_dict(next_point):
        next_point.alpha = 0.5 if cfg.alpha != 0.5 else 0.9
    run_dir.mkdir()
    started = time.perf_counter()
    Run(next_point, run_dir, Observers([])).execute()
    return time.perf_counter() - started


def run_reference(cfg: Any, train_samples: int) -> dict[str, Any]:
    """The plain loop: its own data loading, then the SAME split, model initialisations and budget."""
    from kdrun.bench.reference import loaders, train_reference
    from kdrun.training.from_config import load_data

    started = time.perf_counter()
    data = load_data(cfg.dataset, cfg.seed)  # the same IDX decoding torchvision does, timed on this side too
    if len(data.train) != train_samples:
        raise RuntimeError("the reference and kdrun must train on the same split")  # a bench bug, not user input
    train, test = loaders(data, cfg.batch_size, cfg.seed)
    teacher = fresh_model(cfg, cfg.teacher, data)
    phases = {"teacher": train_reference(teacher, train, test, cfg.teacher_epochs, cfg.lr)}
    phases["independent"] = train_reference(fresh_model(cfg, cfg.student, data), train, test, cfg.student_epochs, cfg.lr)
    teacher.eval()
    kd_scale = cfg.T**2 if cfg.method.get("scale_by_T2", True) else 1.0
    phases["distilled"] = train_reference(
        fresh_model(cfg, cfg.student, data), train, test, cfg.student_epochs, cfg.lr,
        teacher=teacher, temperature=cfg.T, ce_weight=1 - cfg.alpha, kd_weight=cfg.alpha * kd_scale,
    )
    results = {name: {"seconds": p.seconds, "test_acc": p.test_acc, "samples": p.samples} for name, p in phases.items()}
    return {**results, "total": time.perf_counter() - started}


def fresh_model(cfg: Any, group: Any, data: Any) -> Any:
    """A model as kdrun builds it for a phase: seeded with cfg.seed, so both sides start from the same weights.

    It keeps plain nn.Dropout: the reference is the recipe as written, without kdrun's speed settings.
    """
    import torch

    from kdrun.training.from_config import model_from_group

    torch.manual_seed(cfg.seed)
    return model_from_group(group, data)


def phase_work(cfg: Any, run: Any) -> dict[str, tuple[float, int, int]]:
    """Each phase's (FLOPs, optimizer steps, trained parameters), for the better algorithm (teacher logits once)."""
    from kdrun.bench.machine import flops_per_sample
    from kdrun.models import count_parameters

    input_shape = run.data.input_shape
    teacher, student = fresh_model(cfg, cfg.teacher, run.data), fresh_model(cfg, cfg.student, run.data)
    samples = len(run.data.train)
    steps_per_epoch = -(-samples // cfg.batch_size)
    teacher_train, student_train = flops_per_sample(teacher, input_shape, True), flops_per_sample(student, input_shape, True)
    teacher_forward = flops_per_sample(teacher, input_shape, False)
    student_steps = steps_per_epoch * cfg.student_epochs
    return {
        "teacher": (teacher_train * samples * cfg.teacher_epochs, steps_per_epoch * cfg.teacher_epochs, count_parameters(teacher)),
        "independent": (student_train * samples * cfg.student_epochs, student_steps, count_parameters(student)),
        "distilled": (student_train * samples * cfg.student_epochs + teacher_forward * samples, student_steps, count_parameters(student)),
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
        ours = kdrun[phase]["seconds"] + kdrun[phase].get("teacher_logits_seconds", 0.0)
        theirs, samples = reference[phase]["seconds"], reference[phase]["samples"]
        table.add_row(
            phase, f"{theirs:.2f}", f"{ours:.2f}", f"{theirs / ours:.2f}x", f"{samples / theirs:,.0f}", f"{samples / ours:,.0f}",
            f"{reference[phase]['test_acc']:.4f}", f"{kdrun[phase]['test_acc']:.4f}",
            f"{floor.seconds:.2f}", f"{100 * floor.seconds / theirs:.0f}%", f"{100 * floor.seconds / ours:.0f}%",
        )
    table.add_row("end to end", f"{reference['total']:.2f}", f"{kdrun['total']:.2f}", f"{reference['total'] / kdrun['total']:.2f}x",
                  *[""] * (len(columns) - 4))
    console = Console(width=max(Console().width, 150))
    console.print(table)
    console.print(footer(results, floors), highlight=False)


def footer(results: dict[str, Any], floors: dict[str, Any]) -> str:
    kdrun, reference, machine = results["kdrun"], results["reference"], results["machine"]
    logits_pass = kdrun["distilled"].get("teacher_logits_seconds", 0.0)
    independent = kdrun["independent"]["seconds"]
    floor_parts = ", ".join(f"{phase} {f.compute_seconds:.2f} / {f.memory_seconds:.2f}" for phase, f in floors.items())
    return (
        f"distilled / independent time: kdrun {(kdrun['distilled']['seconds'] + logits_pass) / independent:.2f}x "
        f"({kdrun['distilled']['seconds'] / independent:.2f}x without the one-off teacher-logits pass of {logits_pass:.2f}s, "
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

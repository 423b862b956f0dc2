"""From a run's settings and files to the exporter's plain values: which students, which test inputs.

Both the export stage at the end of `kdrun train export=[onnx]` and `kdrun export RUN_DIR` read the
students back from the run's own weight files (distilled.safetensors, and pruned.safetensors /
quantized.pt when compression stages ran), so what is exported is exactly what the run kept: the
best-validation distilled student and each compressed version of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from kdrun.data import DataSplits
from kdrun.data.streaming import in_order_batches
from kdrun.errors import ConfigError
from kdrun.export.runner import DataDescription, check_settings, export_formats, export_students
from kdrun.files import load_weights
from kdrun.results import Exports, PhaseSummary
from kdrun.training.from_config import build_architecture
from kdrun.training.settings import ExportSettings, ModelSpec

EXPORT_DIR = "export"  # inside the run dir


def check_export(settings: ExportSettings) -> None:
    """Before training: known formats, their packages installed, sane check settings."""
    export_formats(settings.formats)
    check_settings(settings)


def exported_phases(phases: dict[str, PhaseSummary]) -> list[str]:
    """The distilled student and the compression stages' results (rows whose source is 'from <phase>')."""
    return [phase for phase, row in phases.items() if phase == "distilled" or str(row.source).startswith("from ")]


def load_float(path: Path, student: nn.Module) -> nn.Module:
    load_weights(path, student, f"{path.name}")
    return student


def load_int8(path: Path, student: nn.Module) -> nn.Module:
    from kdrun.compression.quantize import load_quantized

    return load_quantized(path, student)


LOADERS: dict[str, Callable[[Path, nn.Module], nn.Module]] = {".safetensors": load_float, ".pt": load_int8}


def students_from_files(phases: dict[str, PhaseSummary], new_student: Callable[[], nn.Module]) -> dict[str, nn.Module]:
    """phase -> the student rebuilt on the CPU and loaded from the weights file its row names."""
    students = {}
    for phase in exported_phases(phases):
        path = Path(str(phases[phase].weights))
        if phases[phase].weights is None or not path.is_file():
            raise ConfigError(f"the {phase} student's weights {path} are missing", "export a complete run, or run it again")
        students[phase] = LOADERS[path.suffix](path, new_student()).eval()
    return students


def test_examples(data: DataSplits, limit: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `limit` test images scaled to [0, 1] (what an exported file takes), and their labels, on the CPU."""
    channels = data.input_shape[0]
    batches = in_order_batches(data.test, [0.0] * channels, [1.0] * channels, min(limit, 1024), torch.device("cpu"), seed=seed)
    inputs, targets, count = [], [], 0
    for batch in batches:
        inputs.append(batch.inputs)
        targets.append(batch.targets)
        count += len(batch.targets)
        if count >= limit:
            break
    return torch.cat(inputs)[:limit], torch.cat(targets)[:limit]


def export_run(settings: ExportSettings, student: ModelSpec, data: DataSplits, phases: dict[str, PhaseSummary],
               run_dir: Path, seed: int) -> Exports:
    """Export the run's students to <run_dir>/export/ and check them on its test split; phase -> format -> record."""
    check_settings(settings)
    students = students_from_files(phases, lambda: build_architecture(student, data))
    inputs, targets = test_examples(data, settings.check_samples, seed)
    description = DataDescription(list(data.mean), list(data.std), list(data.class_names))
    return export_students(students, inputs, targets, settings, run_dir / EXPORT_DIR, description)

"""Export students to every requested format and check each file against its PyTorch model.

Plain values in (models, formats, test inputs), plain records out: the run's export stage and
`kdrun export RUN_DIR` both end here. A format that cannot express a model (onnxscript has no
kernels for torchao's dynamic int8 tensors) is recorded with its error and skipped, never fatal for
the others: the float students still export, and summary.json says which file is missing and why.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from kdrun import __version__
from kdrun.compression.measure import median_ms, size_mb
from kdrun.errors import ConfigError, exception_line
from kdrun.export.check import agreement
from kdrun.export.formats import FORMATS, ExportFormat, inference
from kdrun.results import ExportResult, Exports
from kdrun.training.settings import ExportSettings

log = logging.getLogger("kdrun")

CHECK_BATCH = 256  # inputs per comparison call


def export_formats(names: list[str]) -> dict[str, ExportFormat]:
    """The requested formats, with their packages present; checked before any training.

    Raises:
        ConfigError: unknown or repeated format, or a missing optional package.
    """
    if len(set(names)) != len(names):
        raise ConfigError(f"export={names} lists a format twice", "list each once, e.g. export=[onnx,torch_export]")
    formats = {name: FORMATS.build(name) for name in names}
    for exporter in formats.values():
        exporter.require()
    return formats


def check_settings(settings: ExportSettings) -> None:
    for key in ("check_samples", "latency_batch_size", "latency_repeats"):
        if getattr(settings, key) < 1:
            raise ConfigError(f"export_check.{key}={getattr(settings, key)} must be >= 1", "see conf/config.yaml")


class Normalised(nn.Module):
    """The student behind the run's input normalisation: an exported file takes images in [0, 1], as they are."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("scale", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("shift", -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * self.scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) in [0, 1] -> logits (N, classes)
        return self.model(torch.addcmul(self.shift, images, self.scale))


@dataclass
class DataDescription:
    """What a deployed file needs to say about its inputs and outputs (stored in the file's metadata)."""

    mean: list[float]
    std: list[float]
    classes: list[str]

    def metadata(self, phase: str) -> dict[str, str]:
        return {"kdrun.phase": phase, "kdrun.input": "float32 images (N, C, H, W) in [0, 1]; normalised inside",
                "kdrun.mean": json.dumps(self.mean), "kdrun.std": json.dumps(self.std), "kdrun.classes": json.dumps(self.classes),
                "kdrun.version": __version__}


def export_students(models: dict[str, nn.Module], inputs: torch.Tensor, targets: torch.Tensor, settings: ExportSettings,
                    directory: Path, data: DataDescription) -> Exports:
    """phase -> format -> ExportResult; files land in `directory` as <phase><suffix>.

    `inputs` are test images in [0, 1] (not normalised): each file and its PyTorch reference get them
    through the same Normalised wrapper.
    """
    formats = export_formats(settings.formats)
    latency_inputs = repeated(inputs, settings.latency_batch_size)
    threads = torch.get_num_threads()
    results: Exports = {}
    for phase, student in models.items():
        model = Normalised(student, data.mean, data.std).eval()
        reference = inference(model)
        latency_pytorch = median_ms(reference, latency_inputs, settings.latency_repeats)
        for name, exporter in formats.items():
            path = directory / f"{phase}{exporter.suffix}"
            started = time.perf_counter()
            try:
                exporter.write(model, inputs[: min(len(inputs), 2)], path, data.metadata(phase))
                exported = exporter.load(path, threads)
            except Exception as error:  # noqa: BLE001 - exporters raise many types for what they cannot express
                reason = exception_line(root_cause(error), 300)
                results.setdefault(phase, {})[name] = ExportResult(None, name, error=reason)
                log.warning("export: %s as %s failed (%s)", phase, name, reason)
                path.unlink(missing_ok=True)
                continue
            seconds = time.perf_counter() - started
            match = agreement(reference, exported, pairs(inputs, targets))
            check = ExportResult(
                str(path), name, None, size_mb(path), match.samples, match.max_abs_diff, match.top1_agreement,
                match.accuracy_exported, match.accuracy_pytorch, len(latency_inputs), latency_pytorch,
                median_ms(exported, latency_inputs, settings.latency_repeats), seconds,
            )
            results.setdefault(phase, {})[name] = check
            log.info("export: %s -> %s: max |diff| %.2e, top-1 agreement %.4f on %d test inputs; "
                     "CPU latency %.3f ms (PyTorch %.3f ms), batch %d", phase, path.name, check.max_abs_diff,
                     check.top1_agreement, check.checked_samples, check.latency_ms_exported, check.latency_ms_pytorch,
                     check.latency_batch_size)
    return results


def repeated(inputs: torch.Tensor, size: int) -> torch.Tensor:
    """`size` inputs: the first ones, repeated when there are fewer."""
    times = -(-size // len(inputs))
    return inputs.repeat(times, *([1] * (inputs.dim() - 1)))[:size]


def pairs(inputs: torch.Tensor, targets: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(inputs), CHECK_BATCH):
        yield inputs[start:start + CHECK_BATCH], targets[start:start + CHECK_BATCH]


def root_cause(error: BaseException) -> BaseException:
    """The innermost cause: torch.onnx wraps 'no ONNX function for aten._int_mm' in two generic errors."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error

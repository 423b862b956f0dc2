"""The export formats, picked by name in `export=[onnx,torch_export]`: how to write a model, and how to run the file.

Each format writes through a temp name and one rename (a crash never leaves a half-written file that
looks like an export) and loads the file back the way a deployment would, so the check compares
PyTorch with what a user will actually run: onnxruntime on the CPU for ONNX, `torch.export.load` for
`.pt2`. The batch dimension is dynamic in both, so any batch size predicts.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn

from kdrun.errors import ConfigError
from kdrun.registry import Registry

Predictor = Callable[[torch.Tensor], torch.Tensor]  # inputs (N, C, H, W) on the CPU -> logits (N, classes)
INPUT_NAME, OUTPUT_NAME = "input", "logits"
METADATA_FILE = "kdrun.json"  # the .pt2 file's copy of the metadata


class ExportFormat(Protocol):
    suffix: str

    def require(self) -> None: ...  # ConfigError when its packages are missing
    def write(self, model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None: ...
    def load(self, path: Path, threads: int) -> Predictor: ...


FORMATS: Registry = Registry("export format")


def batch_dimension() -> tuple[dict[int, torch.export.Dim], ...]:
    return ({0: torch.export.Dim("batch", min=1)},)


def written_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Let `write` produce `path` under a temp name, then rename; nothing is left behind if it fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@FORMATS.register("onnx")
class Onnx:
    """ONNX via torch's dynamo exporter (onnxscript), run with onnxruntime's CPU provider."""

    suffix = ".onnx"

    def require(self) -> None:
        missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
        if missing:
            raise ConfigError(f"export=[onnx] needs {', '.join(missing)}, not installed", "pip install 'kdrun[export]'")

    def write(self, model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
        for name in ("onnxscript", "onnx_ir"):  # their per-pass info lines reach the console through the root logger
            logging.getLogger(name).setLevel(logging.WARNING)
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=batch_dimension(), verbose=False)
        program.model.metadata_props.update(metadata)  # onnxruntime: session.get_modelmeta().custom_metadata_map
        written_atomically(path, lambda target: program.save(str(target), external_data=False))

    def load(self, path: Path, threads: int) -> Predictor:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # the same threads as the PyTorch side of the latency comparison
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda inputs: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})[0])


@FORMATS.register("torch_export")
class TorchExport:
    """torch.export's ExportedProgram (.pt2): the traced graph with its weights, no Python class needed."""

    suffix = ".pt2"

    def require(self) -> None:
        pass

    def write(self, model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
        program = torch.export.export(model, (example,), dynamic_shapes=batch_dimension())
        extra = {METADATA_FILE: json.dumps(metadata)}  # torch.export.load(path, extra_files={METADATA_FILE: ""})
        written_atomically(path, lambda target: torch.export.save(program, str(target), extra_files=extra))

    def load(self, path: Path, threads: int) -> Predictor:
        return inference(torch.export.load(str(path)).module())


def inference(module: Callable[[torch.Tensor], torch.Tensor]) -> Predictor:
    """`module(inputs)` without autograd (the caller put a PyTorch model in eval mode)."""

    def predict(inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(inputs)

    return predict

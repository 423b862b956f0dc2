"""Post-training and quantisation-aware int8 quantisation of Linear layers with torchao, for the CPU.

torchao is the maintained successor of `torch.ao.quantization` (deprecated in the installed torch).
The schemes (dynamic_int8, weight_only_int8, static_int8, qat_int8) live in schemes.py.
Quantised weights are torchao tensor subclasses (`Int8Tensor`, `IntxUnpackedToInt8Tensor`) that
safetensors cannot store, so the file is `quantized.pt`: a torch.save'd dict of plain values and
tensors that `torch.load(..., weights_only=True)` reads back (torchao allow-lists its classes for
weights-only loading); `load_quantized` rebuilds the model around it.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import torch
from torch import nn

from kdrun.compression.schemes import SCHEMES
from kdrun.compression.stages import STAGES, StageContext, StageOutcome
from kdrun.errors import ConfigError
from kdrun.files import write_bytes_atomic

FILE_FORMAT = "kdrun-torchao-int8"


def require_torchao() -> None:
    # torchao registers its enums with torch's pytree, which logs a deprecation notice meant for torchao's
    # authors on every import (torch 2.14 + torchao 0.18); a user of kdrun can do nothing about it
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise ConfigError("quantize needs torchao, which is not installed", "pip install kdrun[compress]") from None


def save_quantized(path: Path, model: nn.Module, scheme: str) -> None:
    """Write the quantised state dict with its scheme (needed to rebuild the layers), atomically."""
    buffer = io.BytesIO()
    torch.save({"format": FILE_FORMAT, "scheme": scheme, "state_dict": model.state_dict()}, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_quantized(path: Path, model: nn.Module) -> nn.Module:
    """Load a kdrun `quantized.pt` into a freshly built float `model` of the same architecture.

    The model first gets the saved scheme's quantised layout (placeholder values), then the saved
    int8 tensors and scales are assigned in. `torch.load` runs with weights_only=True.

    Raises:
        ConfigError: the file is not a kdrun quantised model, does not fit `model`, or torchao is missing.
    """
    require_torchao()
    import torchao.quantization  # noqa: F401 - registers torchao's classes as safe for weights_only loading

    saved = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != FILE_FORMAT:
        raise ConfigError(f"{path} is not a kdrun quantised model", "pass the quantized.pt of a kdrun run")
    quantized = SCHEMES.build(saved["scheme"]).skeleton(model)
    try:
        quantized.load_state_dict(saved["state_dict"], assign=True)
    except RuntimeError as error:  # missing/unexpected keys or shapes: the wrong architecture was built
        reason = " ".join(str(error).split())[:160]
        raise ConfigError(f"{path} does not match the model ({reason})", "build the run's student config") from None
    return quantized.eval()


@STAGES.register("quantize")
class QuantizeStage:
    """int8 quantisation of the Linear layers by the configured scheme; the result runs on the CPU."""

    phase = "quantized"
    final = True  # its weights are int8 tensor subclasses: pruning cannot follow

    def __init__(self, scheme: str = "dynamic_int8", calibration_batches: int = 10, qat_epochs: int = 1) -> None:
        SCHEMES.get(scheme)  # unknown scheme -> ConfigError listing the choices
        if calibration_batches < 1 or qat_epochs < 1:
            raise ConfigError(
                f"compression.quantize.calibration_batches={calibration_batches}, qat_epochs={qat_epochs} out of range",
                "both must be >= 1",
            )
        self.scheme = scheme
        self.options = {"calibration_batches": calibration_batches, "qat_epochs": qat_epochs}

    def check(self, model: nn.Module) -> None:
        if not any(isinstance(module, nn.Linear) for module in model.modules()):
            raise ConfigError(
                f"cannot quantize {type(model).__name__}: it has no nn.Linear layer (the only layer int8 quantisation covers)",
                "drop quantize from compress",
            )
        require_torchao()

    def apply(self, model: nn.Module, context: StageContext) -> StageOutcome:
        quantized, result = SCHEMES.build(self.scheme).quantize(model, context, self.options)
        weights = context.run_dir / "quantized.pt"
        save_quantized(weights, quantized, self.scheme)
        return StageOutcome(quantized, weights, result, {"scheme": self.scheme, "device": "cpu"})

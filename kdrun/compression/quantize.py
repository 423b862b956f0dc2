"""Post-training int8 quantisation of Linear layers with torchao (`quantize_`), on the CPU.

torchao is the maintained successor of `torch.ao.quantization` (deprecated in the installed torch).
Schemes, by registry name:
  dynamic_int8      int8 weights (per output row) and int8 activations quantised per batch at run
                    time; the matmul runs as an int8 GEMM (`torch._int_mm`).
  weight_only_int8  int8 weights, float activations: a smaller file, float matmul.
The quantised weights are torchao tensor subclasses (`Int8Tensor`) that safetensors cannot store,
so the file is `quantized.pt`: a torch.save'd dict of plain values and tensors that `torch.load(...,
weights_only=True)` reads back (torchao allow-lists its classes); see `load_quantized`.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from kdrun.compression.stages import STAGES, StageContext, StageOutcome
from kdrun.errors import ConfigError
from kdrun.files import write_bytes_atomic
from kdrun.registry import Registry

FILE_FORMAT = "kdrun-torchao-int8"
SCHEMES: Registry[Callable[[], Any]] = Registry("quantisation scheme")


@SCHEMES.register("dynamic_int8")
def dynamic_int8() -> Any:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    return Int8DynamicActivationInt8WeightConfig()


@SCHEMES.register("weight_only_int8")
def weight_only_int8() -> Any:
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig()


def require_torchao() -> None:
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise ConfigError("quantize needs torchao, which is not installed", "pip install kdrun[compress]") from None


def quantize_model(model: nn.Module, scheme: str) -> nn.Module:
    """A CPU copy of `model` with every nn.Linear quantised by `scheme` (the input model is untouched)."""
    from torchao.quantization import quantize_

    quantized = copy.deepcopy(model).cpu().eval()
    quantize_(quantized, SCHEMES.build(scheme))
    return quantized


def save_quantized(path: Path, model: nn.Module, scheme: str) -> None:
    """Write the quantised state dict (with its scheme, needed to rebuild the layers) atomically."""
    buffer = io.BytesIO()
    torch.save({"format": FILE_FORMAT, "scheme": scheme, "state_dict": model.state_dict()}, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_quantized(path: Path, model: nn.Module) -> nn.Module:
    """Load `quantized.pt` into a freshly built float `model` of the same architecture.

    The model is quantised with the saved scheme (so its layers take int8 weights), then the saved
    int8 tensors are assigned in; `torch.load` runs with weights_only=True.

    Raises:
        ConfigError: the file is not a kdrun quantised model.
    """
    require_torchao()
    import torchao.quantization  # noqa: F401 - registers torchao's classes as safe for weights_only loading

    saved = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != FILE_FORMAT:
        raise ConfigError(f"{path} is not a kdrun quantised model", "pass the quantized.pt of a kdrun run")
    quantized = quantize_model(model, saved["scheme"])
    quantized.load_state_dict(saved["state_dict"], assign=True)
    return quantized.eval()


@STAGES.register("quantize")
class QuantizeStage:
    """Post-training int8 quantisation of the Linear layers (no calibration data, no training)."""

    phase = "quantized"
    final = True  # its weights are int8 tensor subclasses: pruning cannot follow

    def __init__(self, scheme: str = "dynamic_int8") -> None:
        SCHEMES.get(scheme)  # unknown scheme -> ConfigError listing the choices
        self.scheme = scheme

    def check(self, model: nn.Module) -> None:
        if not any(isinstance(module, nn.Linear) for module in model.modules()):
            raise ConfigError(
                f"cannot quantize {type(model).__name__}: it has no nn.Linear layer (the only layer int8 quantisation covers)",
                "drop quantize from compress",
            )
        require_torchao()

    def apply(self, model: nn.Module, context: StageContext) -> StageOutcome:
        quantized = quantize_model(model, self.scheme)
        weights = context.run_dir / "quantized.pt"
        save_quantized(weights, quantized, self.scheme)
        return StageOutcome(quantized, weights, None, {"scheme": self.scheme, "device": "cpu"})

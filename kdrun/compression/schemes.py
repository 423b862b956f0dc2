"""The int8 quantisation schemes, by registry name, all built on torchao's `quantize_`.

Each scheme knows how to produce a quantised model from a float one (`quantize`, which may
calibrate or train) and how to give a float model the same quantised layout with placeholder
values (`skeleton`), which is what loading a saved file needs before the int8 tensors are assigned.
torchao is imported inside the functions: it is an optional dependency (kdrun[compress]).
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.utils import prune

from kdrun.registry import Registry

log = logging.getLogger("kdrun")


class Scheme(Protocol):
    def quantize(self, model: nn.Module, context: Any, options: dict[str, Any]) -> tuple[nn.Module, Any]: ...
    def skeleton(self, model: nn.Module) -> nn.Module: ...


SCHEMES: Registry = Registry("quantisation scheme")


def apply_config(model: nn.Module, config: Any) -> nn.Module:
    """A CPU copy of `model` with every nn.Linear converted by a torchao config."""
    from torchao.quantization import quantize_

    converted = copy.deepcopy(model).cpu().eval()
    quantize_(converted, config)
    return converted


@SCHEMES.register("dynamic_int8")
class DynamicInt8:
    """int8 weights (per output row) and int8 activations quantised per batch at run time; int8 GEMM."""

    def config(self) -> Any:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        return Int8DynamicActivationInt8WeightConfig()

    def quantize(self, model: nn.Module, context: Any, options: dict[str, Any]) -> tuple[nn.Module, None]:
        return apply_config(model, self.config()), None

    def skeleton(self, model: nn.Module) -> nn.Module:
        return apply_config(model, self.config())


@SCHEMES.register("weight_only_int8")
class WeightOnlyInt8(DynamicInt8):
    """int8 weights, float activations: a quarter of the weight bytes, float matmul."""

    def config(self) -> Any:
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig()


@SCHEMES.register("static_int8")
class StaticInt8:
    """int8 weights and int8 activations with FIXED activation scales, calibrated on the training split.

    Calibration: the largest |input| each Linear sees over `calibration_batches` training batches
    sets its symmetric per-tensor activation scale (max / 127); weights are per output row.
    """

    def config(self, scale: float) -> Any:
        from torchao.quantization import Int8StaticActivationInt8WeightConfig, PerRow, PerTensor

        # scale must have the activation's rank (2-D for Linear inputs of shape (batch, features))
        return Int8StaticActivationInt8WeightConfig(
            act_quant_scale=torch.tensor([[scale]]), granularity=[PerTensor(), PerRow()], set_inductor_config=False
        )

    def quantize(self, model: nn.Module, context: Any, options: dict[str, Any]) -> tuple[nn.Module, None]:
        converted = copy.deepcopy(model).cpu().eval()
        maxima = calibrate(converted, context.batches("train", torch.device("cpu")), options["calibration_batches"])
        log.info("static_int8 calibration: max |input| per Linear %s", {name: round(value, 3) for name, value in maxima.items()})
        return self.convert(converted, {name: max(value, 1e-8) / 127.0 for name, value in maxima.items()}), None

    def skeleton(self, model: nn.Module) -> nn.Module:
        converted = copy.deepcopy(model).cpu().eval()
        return self.convert(converted, {name: 1.0 for name in linear_names(converted)})

    def convert(self, model: nn.Module, scales: dict[str, float]) -> nn.Module:
        from torchao.quantization import quantize_

        for name, scale in scales.items():
            quantize_(model, self.config(scale), filter_fn=lambda module, path, name=name: path == name)
        return model


@SCHEMES.register("qat_int8")
class QatInt8:
    """Quantisation-aware training: fine-tune with fake-quantised Linear layers under the distillation
    loss (`qat_epochs` epochs), then convert to int8 weights (per channel) with int8 per-token
    activations (torchao QATConfig with Int8DynamicActivationIntxWeightConfig, int8 weights)."""

    def base_config(self) -> Any:
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerAxis

        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0), version=2)

    def quantize(self, model: nn.Module, context: Any, options: dict[str, Any]) -> tuple[nn.Module, Any]:
        from torchao.quantization import quantize_
        from torchao.quantization.qat import QATConfig

        trained = copy.deepcopy(model)
        quantize_(trained, QATConfig(self.base_config(), step="prepare"))
        masked = keep_zeros(trained)  # a pruned student stays exactly as sparse while it trains
        result = context.train("qat", trained, context.objective, options["qat_epochs"])
        for module in masked:
            prune.remove(module, "weight")
        quantize_(trained, QATConfig(self.base_config(), step="convert"))
        return trained.cpu().eval(), result

    def skeleton(self, model: nn.Module) -> nn.Module:
        from torchao.quantization import quantize_
        from torchao.quantization.qat import QATConfig

        converted = copy.deepcopy(model).cpu().eval()
        quantize_(converted, QATConfig(self.base_config(), step="prepare"))
        quantize_(converted, QATConfig(self.base_config(), step="convert"))
        return converted


def keep_zeros(model: nn.Module) -> list[nn.Module]:
    """Pin every zero weight of every Linear at zero during training (a pruning mask); returns the masked layers.

    Symmetric int8 quantisation maps 0 to 0, so the converted model keeps the sparsity as well.
    """
    masked = []
    for module in model.modules():
        if isinstance(module, nn.Linear) and bool((module.weight == 0).any()):
            prune.custom_from_mask(module, "weight", mask=(module.weight != 0))
            masked.append(module)
    return masked


def linear_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def calibrate(model: nn.Module, batches: Any, limit: int) -> dict[str, float]:
    """Largest |input| of every nn.Linear over the first `limit` batches (forward hooks, always removed)."""
    maxima = {name: 0.0 for name in linear_names(model)}

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            maxima[name] = max(maxima[name], float(inputs[0].detach().abs().max()))
        return hook

    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_pre_hook(record(name)) for name in maxima]
    try:
        with torch.inference_mode():
            for index, batch in enumerate(batches):
                if index >= limit:
                    break
                model(batch.inputs)
    finally:
        for handle in handles:
            handle.remove()
    return maxima

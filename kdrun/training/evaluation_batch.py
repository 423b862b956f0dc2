"""`trainer.eval_batch_size=auto`: evaluation batches sized to the models, not one number for all.

Evaluation (validation, test, the teacher-logits pass) runs without autograd, so on a GPU large batches
are simply faster. On a CPU they are not for convolutional models: a batch's activations must stay in
the caches. A small CNN teacher on 28x28 MNIST (64 channels at full resolution, 196 KiB per sample in
its widest layer) spent 13.5 s evaluating its 12.5k validation and test images at batch 1024 (205 MB
per layer output) and 7.6-8.5 s at 32-128; the R4 MLPs (4.7 KiB per sample) want the largest batch,
because their matmuls get more efficient with every row. Budgeting the widest layer output fits both
(docs/performance.md).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import torch
from torch import nn

GPU_BATCH = 1024
CPU_ACTIVATION_BUDGET = 16 << 20  # bytes of the widest layer output per CPU evaluation batch
CPU_BATCH_RANGE = (32, 1024)

log = logging.getLogger("kdrun")


def evaluation_batch_size(setting: Any, models: Iterable[nn.Module], input_shape: tuple[int, ...], device: torch.device) -> int:
    """The configured size, or for `auto` the largest power of two in CPU_BATCH_RANGE whose widest layer
    output (over all `models`) fits CPU_ACTIVATION_BUDGET; GPU_BATCH off the CPU."""
    if setting != "auto":
        return int(setting)
    if device.type != "cpu":
        return GPU_BATCH
    widest = max(widest_output_bytes(model, input_shape, device) for model in models)
    smallest, size = CPU_BATCH_RANGE
    while size > smallest and size * widest > CPU_ACTIVATION_BUDGET:
        size //= 2
    log.info("evaluation batches of %d (trainer.eval_batch_size=auto: widest layer output %.0f KiB per sample)",
             size, widest / 1024)
    return size


def widest_output_bytes(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> int:
    """Bytes per sample of the largest tensor any submodule outputs, from one forward of one sample."""
    sizes = [0]

    def record(module: nn.Module, inputs: Any, output: Any) -> None:
        for value in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(value, torch.Tensor):
                sizes.append(value.numel() * value.element_size())

    model = getattr(model, "_orig_mod", model)  # torch.compile'd: probe the plain module, compile nothing
    handles = [module.register_forward_hook(record) for module in model.modules()]
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return max(sizes)

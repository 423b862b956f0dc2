"""optimizer.zero_grad + optimizer.step without torch's per-call Python overhead, where that is exact.

`torch.optim.Adam.step` wraps its one fused kernel in profiler records, hook loops, a dynamo guard,
a grad-mode switch and a walk over every parameter to rebuild the tensor lists: about 0.2 ms per
call on CPU. For a 20-unit student that is a third of the whole training step (docs/performance.md).
For fused Adam/AdamW whose state already exists, FastStep calls the very same fused kernel with the
same arguments torch would pass (the results are bit-identical, which the tests check against
`optimizer.step()`); everything else, including every first step (which creates the state), goes
through `optimizer.step()` unchanged.

The kernel (`torch._fused_adam_`) is private API, so the direct call is made only on the torch minor
versions it was checked on, bit for bit, by tests/test_optimizer_step.py (VERIFIED_TORCH); on any other
version FastStep is plain `optimizer.zero_grad(set_to_none=True)` + `optimizer.step()` (also tested).
To verify a new version: run that test file on it, then add the version here.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.optim.optimizer as torch_optimizer

# The exact classes whose step() is the single kernel call reproduced here (a subclass may override step).
DIRECT_STEP_TYPES = (torch.optim.Adam, torch.optim.AdamW)
VERIFIED_TORCH = {(2, 14)}  # (major, minor) versions whose Adam/AdamW.step() FastStep reproduces bit for bit


def torch_minor(version: str) -> tuple[int, int]:
    """(2, 14) for '2.14.1+cu128'."""
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


def direct_call_verified(version: str = torch.__version__) -> bool:
    """True when this torch's fused Adam kernel is the one FastStep was checked against."""
    return torch_minor(version) in VERIFIED_TORCH and hasattr(torch, "_fused_adam_") and hasattr(torch, "_fused_adamw_")


DIRECT_CALL = direct_call_verified()


class FastStep:
    """Clears gradients and steps one optimizer; picks the direct fused call whenever it is exact."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
        self.direct = (DIRECT_CALL and type(optimizer) in DIRECT_STEP_TYPES
                       and all(map(_one_device_and_dtype, optimizer.param_groups)))

    def clear_gradients(self) -> None:
        """zero_grad(set_to_none=True) for these parameters, without its per-call profiler record."""
        for parameter in self.parameters:
            parameter.grad = None

    def step(self) -> None:
        if not self.direct or not self._direct_call_is_exact():
            self.optimizer.step()
            return
        with torch.no_grad():  # as Optimizer.step: in-place updates of leaf parameters
            for group in self.optimizer.param_groups:
                self._fused_group_step(group)

    def _direct_call_is_exact(self) -> bool:
        """True when optimizer.step() would make exactly the kernel call below (and nothing else)."""
        optimizer = self.optimizer
        if optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks or _global_hooks():
            return False
        if getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None:
            return False  # a GradScaler is unscaling through the optimizer
        for group in optimizer.param_groups:
            if not group["fused"] or group["amsgrad"] or group["capturable"] or group["differentiable"]:
                return False
            if any(isinstance(value, torch.Tensor) for value in (group["lr"], *group["betas"])):
                return False
        state = optimizer.state  # state.get: the defaultdict would create an empty entry
        return all(parameter.grad is not None and "exp_avg_sq" in state.get(parameter, ()) for parameter in self.parameters)

    def _fused_group_step(self, group: dict[str, Any]) -> None:
        """torch.optim.adam._fused_adam for one parameter group on one device and dtype, no grad scaler."""
        parameters = group["params"]
        states = [self.optimizer.state[parameter] for parameter in parameters]
        steps = [state["step"] for state in states]
        beta1, beta2 = group["betas"]
        kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
        torch._foreach_add_(steps, 1)
        kernel(
            parameters, [parameter.grad for parameter in parameters],
            [state["exp_avg"] for state in states], [state["exp_avg_sq"] for state in states], [], steps,
            amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
            eps=group["eps"], maximize=group["maximize"], grad_scale=None, found_inf=None,
        )


def _global_hooks() -> bool:
    """Hooks registered for every optimizer (torch.optim.optimizer.register_optimizer_step_*_hook)."""
    return bool(getattr(torch_optimizer, "_global_optimizer_pre_hooks", None)
                or getattr(torch_optimizer, "_global_optimizer_post_hooks", None))


def _one_device_and_dtype(group: dict[str, Any]) -> bool:
    """torch splits a group by device and dtype before the fused call; FastStep makes one call per group."""
    return len({(parameter.device, parameter.dtype) for parameter in group["params"]}) <= 1

"""K students of one architecture as stacked tensors: one vmapped call trains or evaluates them all.

The students' parameters and buffers are stacked along a new leading dimension
(`torch.func.stack_module_state`), and a meta-device copy of the architecture is called with each
member's slice (`functional_call`) under `vmap`. A logit method's loss is vmapped too: the members'
objectives differ only in their temperature and term weights (kdrun/training/stacked/grouping.py),
so one objective computes every member's loss with the member's own values passed in as tensors.

Randomness is `same`: a stack holds jobs with one seed, which alone draw the same dropout masks from
the same global generator state (they start from identical weights). With `same` the stack draws each
mask once per call, of one member's shape, exactly as each job draws it alone, so the masks are
bit-identical to the solo runs (tests/test_stacked.py).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Mapping

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from kdrun.data.batches import Batch, InMemoryBatches
from kdrun.methods import Objective


class StackedStudents:
    """The stacked state of K same-architecture students, and the vmapped forward over it."""

    def __init__(self, students: list[nn.Module]) -> None:
        self.size = len(students)
        self.params, self.buffers = stack_module_state(students)  # params: new leaves that require grad
        self.architecture = copy.deepcopy(students[0]).to("meta")  # the code; every tensor comes from the stack
        self.state_keys = list(students[0].state_dict())

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def train(self, mode: bool = True) -> None:
        self.architecture.train(mode)  # dropout and BatchNorm read the architecture's flag

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """(K, B, classes): every member on the same inputs."""
        def member(params: dict, buffers: dict) -> torch.Tensor:
            return functional_call(self.architecture, (params, buffers), (inputs,))

        return vmap(member, randomness="same")(self.params, self.buffers)

    def losses(self, objective: Objective, batch: Batch, temperatures: torch.Tensor,
               weights: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Every member's logits (K, B, classes) and weighted terms ((K,) each) on one shared batch.

        `objective` computes the loss of each member with that member's temperature and term weights.
        """
        def member(params: dict, buffers: dict, temperature: torch.Tensor, member_weights: dict) -> tuple:
            def model(inputs: torch.Tensor) -> torch.Tensor:
                return functional_call(self.architecture, (params, buffers), (inputs,))

            with member_values(objective, temperature, member_weights):
                output = objective(model, batch)
            return output.logits, output.terms

        return vmap(member, randomness="same")(self.params, self.buffers, temperatures, dict(weights))

    def correct(self, batches: InMemoryBatches) -> torch.Tensor:
        """(K,) correct predictions on a split, in eval mode without autograd."""
        self.train(False)
        correct = torch.zeros(self.size, dtype=torch.int64, device=batches.device)
        with torch.inference_mode():
            for batch in batches:
                correct += (self.logits(batch.inputs).argmax(dim=-1) == batch.targets).sum(dim=-1)
        return correct

    def member_state(self, index: int) -> dict[str, torch.Tensor]:
        """Member `index`'s state dict (copies), as `student.state_dict()` of a student trained alone."""
        tensors = {**self.params, **self.buffers}
        return {key: tensors[key][index].detach().clone() for key in self.state_keys}

    def load_member_state(self, index: int, state: Mapping[str, torch.Tensor]) -> None:
        tensors = {**self.params, **self.buffers}
        with torch.no_grad():
            for key, value in state.items():
                tensors[key][index].copy_(value)


@contextlib.contextmanager
def member_values(objective: Objective, temperature: torch.Tensor, weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """The objective with one member's temperature and term weights (vmapped tensors) for one call."""
    saved = objective.temperature, objective.weights
    objective.temperature, objective.weights = temperature, {**objective.weights, **weights}
    try:
        yield
    finally:
        objective.temperature, objective.weights = saved

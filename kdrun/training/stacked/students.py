"""K students of one architecture as stacked tensors: one call trains or evaluates them all.

The students' parameters and buffers are stacked along a new leading dimension
(`torch.func.stack_module_state`), and a meta-device copy of the architecture is called with each
member's slice (`functional_call`) under `vmap`. The members' objectives differ only in their
temperature and term weights (kdrun/training/stacked/grouping.py), so ONE objective computes every
member's loss from the (K, B, classes) logits with the members' values passed in as (K,) tensors
(the methods with `stacks_members`, kdrun/methods/losses.py): the loss is not vmapped.

Randomness is `same`: a stack holds jobs with one seed, which alone draw the same dropout masks from
the same global generator state (they start from identical weights). With `same` the stack draws each
mask once per call, of one member's shape, exactly as each job draws it alone, so the masks are
bit-identical to the solo runs (tests/test_stacked.py).

A plain MLP skips vmap and functional_call for the forward too: sequential.py multiplies the stacked
weights by hand (the same masks).
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
from kdrun.training.stacked.sequential import batched_forward


class StackedStudents:
    """The stacked state of K same-architecture students, and the vmapped forward over it."""

    def __init__(self, students: list[nn.Module]) -> None:
        self.size = len(students)
        self.params, self.buffers = stack_module_state(students)  # params: new leaves that require grad
        self.architecture = copy.deepcopy(students[0]).to("meta")  # the code; every tensor comes from the stack
        self.state_keys = list(students[0].state_dict())
        self.batched = batched_forward(self.architecture)  # None: the vmap path

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def train(self, mode: bool = True) -> None:
        self.architecture.train(mode)  # dropout and BatchNorm read the architecture's flag

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """(K, B, classes): every member on the same inputs."""
        if self.batched is not None:
            return self.batched(self.params, inputs)

        def member(params: dict, buffers: dict) -> torch.Tensor:
            return functional_call(self.architecture, (params, buffers), (inputs,))

        return vmap(member, randomness="same")(self.params, self.buffers)

    def losses(self, objective: Objective, batch: Batch, temperatures: torch.Tensor,
               weights: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Every member's logits (K, B, classes) and weighted terms ((K,) each) on one shared batch.

        `objective` (a method with `stacks_members`) computes all K losses in one call, each with its
        member's temperature and term weights, from the K members' logits: no vmap over the loss.
        """
        with member_values(objective, temperatures, weights):
            output = objective(self.logits, batch)
        return output.logits, output.terms

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
def member_values(objective: Objective, temperature: torch.Tensor, weights: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """The objective with the members' temperatures and term weights ((K,) tensors) for one call."""
    saved = objective.temperature, objective.weights
    objective.temperature, objective.weights = temperature, {**objective.weights, **weights}
    try:
        yield
    finally:
        objective.temperature, objective.weights = saved

"""K stacked MLP students forward by hand: batched matrix products instead of vmap + functional_call.

vmap and functional_call cost a fixed ~1 ms per step in Python (pytree handling, swapping the
parameters into the module, the batching rules' extra ops), which is more than a whole solo step of
a 784-20-20-10 student (docs/stacked.md). For the plain MLP shape, nn.Sequential of Flatten, Linear,
ReLU, Dropout and Identity, the stacked forward is three ops per layer: the first Linear is ONE
matrix product of the shared batch with every member's weights side by side, the later ones
`baddbmm` on (K, B, features), and each dropout draws one mask of a member's shape, exactly as a solo
run draws it (same generator, same order, same shape), broadcast over the members: the "same"
randomness of the vmap path. Every other architecture keeps the vmap path (students.py).
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch
from torch import nn
from torch.nn import functional

from kdrun.training.speed.dropout import FastDropout

Forward = Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]
DROPOUTS = (nn.Dropout, FastDropout)  # exact classes: their forward on ones() is the mask a solo run draws


def batched_forward(architecture: nn.Module) -> Optional[Forward]:
    """forward(stacked_params, inputs) -> (K, B, classes) for a plain MLP; None for anything else."""
    if type(architecture).forward is not nn.Sequential.forward or not isinstance(architecture, nn.Sequential):
        return None
    if any(not _supported(layer) for layer in architecture):
        return None
    layers = list(architecture.named_children())
    if not any(isinstance(layer, nn.Linear) for _, layer in layers):
        return None

    def forward(params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        hidden, stacked = inputs, False  # stacked: hidden has the leading member dimension
        for name, layer in layers:
            if isinstance(layer, nn.Linear):
                hidden = _linear(hidden, stacked, params[f"{name}.weight"], params.get(f"{name}.bias"))
                stacked = True
            elif isinstance(layer, nn.Flatten):
                hidden = hidden.flatten(2 if stacked else 1)
            elif isinstance(layer, nn.ReLU):
                hidden = functional.relu(hidden)
            elif type(layer) in DROPOUTS and layer.training and layer.p > 0:
                mask_shape = hidden.shape[1:] if stacked else hidden.shape
                hidden = hidden * layer(torch.ones(mask_shape, dtype=hidden.dtype, device=hidden.device))
        return hidden

    return forward


def _supported(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Flatten):
        return layer.start_dim == 1 and layer.end_dim == -1
    return type(layer) in (nn.Linear, nn.ReLU, nn.Identity, *DROPOUTS)


def _linear(hidden: torch.Tensor, stacked: bool, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Every member's Linear: weight (K, out, in), hidden (B, in) shared or (K, B, in) per member."""
    members, out_features, in_features = weight.shape
    if not stacked:  # one product with all members' weights side by side: (B, in) @ (in, K * out)
        flat = weight.reshape(members * out_features, in_features).t()
        product = hidden @ flat if bias is None else torch.addmm(bias.reshape(-1), hidden, flat)
        return product.view(hidden.shape[0], members, out_features).transpose(0, 1)
    if bias is None:
        return torch.bmm(hidden, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), hidden, weight.transpose(1, 2))

"""Magnitude pruning of conv and linear weights (torch.nn.utils.prune), optionally iterative with
distillation fine-tuning between steps (recipe R5: global L1, amount 0.2).

Why iterative: removing many weights at once costs accuracy that a few epochs of training under
the same distillation loss can win back; the masks stay attached during fine-tuning (pruning's
forward pre-hook multiplies `weight_orig` by `weight_mask`), so pruned weights stay zero. At the
end the masks are made permanent (`prune.remove`), leaving plain weights with exact zeros.
"""

from __future__ import annotations

import copy
import logging

from torch import nn
from torch.nn.utils import prune

from kdrun.compression.stages import STAGES, StageContext, StageOutcome
from kdrun.errors import ConfigError
from kdrun.files import save_weights

log = logging.getLogger("kdrun")

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, 'weight') for every conv and linear layer, in module order."""
    return [(module, "weight") for module in model.modules() if isinstance(module, PRUNABLE)]


def global_l1_prune(model: nn.Module, count: int) -> None:
    """Zero the `count` smallest-magnitude weights (among those still unpruned) across all layers at once."""
    prune.global_unstructured(prunable_weights(model), pruning_method=prune.L1Unstructured, amount=count)


def channel_l1_prune(model: nn.Module, amount: float) -> None:
    """Zero the fraction `amount` of output channels/units with the smallest L1 norm, layer by layer.

    The last layer is left whole: its output units are the classes, and removing one would make
    that class unpredictable.
    """
    for module, name in prunable_weights(model)[:-1]:
        prune.ln_structured(module, name, amount=amount, n=1, dim=0)


def make_permanent(model: nn.Module) -> None:
    """Fold the masks into the weights and drop the pruning hooks: a plain model with exact zeros."""
    for module, name in prunable_weights(model):
        if prune.is_pruned(module) and hasattr(module, f"{name}_mask"):
            prune.remove(module, name)


@STAGES.register("prune")
class PruneStage:
    """Global unstructured L1 pruning (or per-layer channel pruning), in `steps` equal steps."""

    phase = "pruned"
    final = False

    def __init__(
        self, amount: float = 0.2, structure: str = "unstructured", steps: int = 1, finetune_epochs: int = 0
    ) -> None:
        if not 0 < amount < 1:
            raise ConfigError(f"compression.prune.amount={amount} is outside (0, 1)", "it is the fraction of weights set to zero; try 0.2")
        if structure not in ("unstructured", "channel"):
            raise ConfigError(f"compression.prune.structure={structure} is unknown", "choose unstructured or channel")
        if steps < 1 or finetune_epochs < 0:
            raise ConfigError(
                f"compression.prune.steps={steps}, finetune_epochs={finetune_epochs} out of range",
                "steps >= 1 and finetune_epochs >= 0",
            )
        self.amount, self.structure, self.steps, self.finetune_epochs = amount, structure, steps, finetune_epochs

    def check(self, model: nn.Module) -> None:
        minimum = 2 if self.structure == "channel" else 1
        if len(prunable_weights(model)) < minimum:
            raise ConfigError(
                f"the student has no {'hidden ' if minimum == 2 else ''}conv or linear layer to prune",
                "drop prune from compress, or use structure=unstructured",
            )

    def apply(self, model: nn.Module, context: StageContext) -> StageOutcome:
        model = copy.deepcopy(model)  # the distilled student's own row and weights stay as they were
        result = None
        for step in range(1, self.steps + 1):
            self.prune_step(model, step)
            if self.finetune_epochs > 0:
                result = context.train(f"prune_step{step}", model, context.objective, self.finetune_epochs)
        make_permanent(model)
        weights = context.run_dir / "pruned.safetensors"
        save_weights(weights, model, {"phase": self.phase, "structure": self.structure, "amount": str(self.amount)})
        extra = {"amount": self.amount, "structure": self.structure, "steps": self.steps,
                 "finetune_epochs": self.finetune_epochs}
        return StageOutcome(model, weights, result, extra)

    def prune_step(self, model: nn.Module, step: int) -> None:
        """Bring the sparsity to amount * step / steps (exact counts, so the final fraction is exact)."""
        target = self.amount * step / self.steps
        if self.structure == "channel":
            previous = self.amount * (step - 1) / self.steps
            channel_l1_prune(model, (target - previous) / (1 - previous))  # share of the still-unpruned channels
            return
        total = sum(module.weight.numel() for module, _ in prunable_weights(model))
        already = round(self.amount * (step - 1) / self.steps * total)
        global_l1_prune(model, round(target * total) - already)
        log.info("prune step %d/%d: %d of %d conv/linear weights zeroed", step, self.steps, round(target * total), total)

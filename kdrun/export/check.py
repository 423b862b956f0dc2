"""Does the exported file predict what the PyTorch model predicts? Measured on real test inputs.

An exporter can silently change numbers (operator rewrites, fused kernels, another float order), so a
file is only as good as its agreement with the model it came from: the largest absolute difference
of the logits and the share of inputs whose top-1 class is the same, over `check_samples` inputs of
the test split (normalised as in training). CPU latency of both sides is the median of several timed
forwards after warm-up (compression.measure.median_ms, as for the compression stages), same threads.
The record of each file is kdrun.results.ExportResult.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from kdrun.export.formats import Predictor


@dataclass
class Agreement:
    samples: int
    max_abs_diff: float
    top1_agreement: float
    accuracy_exported: float
    accuracy_pytorch: float


def agreement(reference: Predictor, exported: Predictor, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Agreement:
    """Compare two predictors batch by batch on (inputs, targets) pairs."""
    samples, same, right_exported, right_reference, worst = 0, 0, 0, 0, 0.0
    for inputs, targets in batches:
        expected, got = reference(inputs).float(), exported(inputs).float()
        worst = max(worst, float((expected - got).abs().max()))
        same += int((expected.argmax(1) == got.argmax(1)).sum())
        right_reference += int((expected.argmax(1) == targets).sum())
        right_exported += int((got.argmax(1) == targets).sum())
        samples += len(targets)
    share = lambda count: count / samples if samples else float("nan")  # noqa: E731
    return Agreement(samples, worst, share(same), share(right_exported), share(right_reference))

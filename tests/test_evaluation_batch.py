"""trainer.eval_batch_size=auto sizes CPU evaluation batches to the widest layer output of the models."""

from __future__ import annotations

import pytest
import torch

from kdrun.models import build_model
from kdrun.training.evaluation_batch import CPU_ACTIVATION_BUDGET, evaluation_batch_size, widest_output_bytes

CPU = torch.device("cpu")
MNIST_SHAPE = (1, 28, 28)


def test_widest_output_is_measured_per_sample_and_leaves_the_model_as_it_was():
    model = build_model("small_cnn", MNIST_SHAPE, 10, widths=[64, 128], hidden=32)
    model.train()
    assert widest_output_bytes(model, MNIST_SHAPE, CPU) == 64 * 28 * 28 * 4  # first block, full resolution, float32
    assert model.training
    assert all(not module._forward_hooks for module in model.modules())


def test_auto_gives_mlps_the_largest_batch_and_cnns_one_that_fits_the_budget():
    mlp = build_model("mlp", MNIST_SHAPE, 10, hidden=[1200, 1200], dropout=0.5)
    cnn = build_model("small_cnn", MNIST_SHAPE, 10, widths=[64, 128], hidden=32)
    assert evaluation_batch_size("auto", [mlp], MNIST_SHAPE, CPU) == 1024
    size = evaluation_batch_size("auto", [mlp, cnn], MNIST_SHAPE, CPU)  # the widest model decides for both
    assert size == 64
    assert size * 64 * 28 * 28 * 4 <= CPU_ACTIVATION_BUDGET < 2 * size * 64 * 28 * 28 * 4
    huge = build_model("small_cnn", (3, 224, 224), 10, widths=[64, 128], hidden=32)
    assert evaluation_batch_size("auto", [huge], (3, 224, 224), CPU) == 32  # never below the range


@pytest.mark.parametrize("setting, device, expected", [(256, "cpu", 256), ("auto", "cuda", 1024), (7, "cuda", 7)])
def test_a_number_is_used_as_given_and_gpus_get_large_batches(setting, device, expected):
    unused = build_model("small_cnn", MNIST_SHAPE, 10, widths=[64, 128], hidden=32)
    assert evaluation_batch_size(setting, [unused], MNIST_SHAPE, torch.device(device)) == expected

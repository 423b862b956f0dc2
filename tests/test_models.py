"""Model families match the benchmark's definitions (the CIFAR-100 table in docs/benchmarks.md depends on it)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional

from kdrun.models import build_model, count_parameters
from kdrun.models.wrn import WideBlock

# Parameters and buffers at 100 classes of RepDistiller's models (models/resnet.py, wrn.py, vgg.py; vgg8/13 =
# vgg8_bn/vgg13_bn), counted by running them at commit b84f547c; the usual published sizes are these
# rounded: 0.28M, 0.47M, 0.86M, 1.74M, 1.23M, 7.43M, 0.70M, 2.26M, 0.57M, 3.96M, 9.46M.
REFERENCE_SIZES = {
    "resnet20": (278_324, 1_589),
    "resnet32": (472_756, 2_497),
    "resnet56": (861_620, 4_313),
    "resnet110": (1_736_564, 8_399),
    "resnet8x4": (1_233_540, 2_762),
    "resnet32x4": (7_433_860, 9_954),
    "wrn_16_1": (180_916, 941),
    "wrn_16_2": (703_284, 1_837),
    "wrn_40_1": (569_780, 2_757),
    "wrn_40_2": (2_255_156, 5_445),
    "vgg8": (3_965_028, 2_949),
    "vgg13": (9_462_180, 5_898),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_SIZES))
def test_parameter_and_buffer_counts_match_the_benchmark_models(name: str):
    model = build_model(name, (3, 32, 32), 100)
    buffers = sum(buffer.numel() for buffer in model.buffers())
    assert (count_parameters(model), buffers) == REFERENCE_SIZES[name]


def test_wide_block_of_constant_width_adds_the_raw_input():
    """With conv2 zeroed the block is its shortcut: the input itself (not its BN-ReLU)."""
    block = WideBlock(8, 8, 1, 0.0).eval()
    torch.nn.init.zeros_(block.conv2.weight)
    inputs = torch.randn(2, 8, 5, 5)
    assert torch.equal(block(inputs), inputs)


def test_wide_block_that_changes_width_projects_the_preactivated_input():
    block = WideBlock(4, 8, 2, 0.0).eval()
    torch.nn.init.zeros_(block.conv2.weight)
    with torch.no_grad():
        block.bn1.running_mean.fill_(0.5)  # a BN that changes its input, so raw and pre-activated differ
    inputs = torch.randn(2, 4, 6, 6)
    expected = functional.conv2d(torch.relu(block.bn1(inputs)), block.projection.weight, stride=2)
    assert torch.allclose(block(inputs), expected, atol=1e-6)


@pytest.mark.parametrize("size, pooled", [(32, 3), (64, 4)])
def test_cifar_vgg_pools_before_the_last_block_only_from_64_pixels(size: int, pooled: int):
    """RepDistiller's VGG: 3 max pools at 32x32 (the last two blocks see 4x4), a 4th at 64x64."""
    model = build_model("vgg8", (3, size, size), 10).eval()
    seen = []
    hook = model.blocks[4].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[-1]))
    model(torch.zeros(1, 3, size, size))
    hook.remove()
    assert seen == [size // 2**pooled]


def test_lenet5_has_lenet5s_layers_at_28x28():
    """By hand: conv 1*6*25+6, conv 6*16*25+16, fc (16*7*7)*120+120, 120*84+84, 84*10+10."""
    model = build_model("lenet5", (1, 28, 28), 10)
    assert count_parameters(model) == 156 + 2_416 + 94_200 + 10_164 + 850
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_mlp_layer_paths_do_not_depend_on_dropout(dropout: float):
    """The feature methods tap "5", the second hidden ReLU, in the default (no dropout) and R4 (0.5) MLPs."""
    layers = dict(build_model("mlp", (1, 8, 8), 10, hidden=[20, 20], dropout=dropout).named_modules())
    assert isinstance(layers["5"], torch.nn.ReLU) and layers["4"].out_features == 20 and layers["7"].out_features == 10

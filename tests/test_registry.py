"""Registries: unknown names and options are one-line config errors that list the valid choices."""

from __future__ import annotations

import pytest
import torch

from kdrun.data import DATASETS
from kdrun.errors import ConfigError
from kdrun.methods import METHODS
from kdrun.models import MODELS, build_model, check_output
from kdrun.registry import Registry


def test_unknown_name_lists_choices_and_closest():
    with pytest.raises(ConfigError) as error:
        METHODS.get("weightd")
    assert "did you mean 'weighted'" in error.value.hint and "basic" in error.value.hint


def test_unknown_option_lists_valid_options():
    with pytest.raises(ConfigError) as error:
        build_model("mlp", (1, 8, 8), 10, hiden=[3])
    assert "no option 'hiden'" in error.value.message and "hidden" in error.value.hint
    assert "num_classes" not in error.value.hint  # supplied by kdrun, not a config key


def test_duplicate_registration_raises():
    registry: Registry = Registry("thing")
    registry.register("a")(lambda: 1)
    with pytest.raises(ValueError):
        registry.register("a")(lambda: 2)


# models that wrap another library or the user's code need to be told what to build
REQUIRED_OPTIONS = {"custom": {"_target_": "kdrun.models.mlp.MLP", "hidden": [5], "dropout": 0.0},
                    "timm": {"model": "test_resnet"}}


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_every_model_runs_forward_backward(name, shape):
    if name == "timm":
        pytest.importorskip("timm")
    model = build_model(name, shape, 7, **REQUIRED_OPTIONS.get(name, {}))
    check_output(model, shape, 7)
    output = model(torch.randn(4, *shape))
    output.sum().backward()
    assert output.shape == (4, 7) and torch.isfinite(output).all()


def test_registries_are_populated():
    assert {"digits", "mnist"} <= set(DATASETS.names())
    assert {"basic", "weighted"} <= set(METHODS.names())

"""Compression stages: pruning fractions and masks, int8 quantisation (size, closeness, round trip),
the stage framework's errors, and `kdrun train compress=[prune,quantize]` end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import TINY, read_metrics, read_summary
from kdrun.compression import STAGES, StageContext, check_stage_order, load_quantized
from kdrun.compression.measure import count_nonzero, size_mb
from kdrun.compression.prune import PruneStage, prunable_weights
from kdrun.compression.quantize import QuantizeStage, require_torchao
from kdrun.data.base import Split
from kdrun.data.batches import InMemoryBatches
from kdrun.errors import ConfigError
from kdrun.files import save_weights
from kdrun.methods import CrossEntropy
from kdrun.models import build_model
from kdrun.training.loop import PhaseSettings, evaluate, train_phase

torch.set_num_threads(1)


class Silent:
    def phase_started(self, *args) -> None: ...
    def step_done(self, *args) -> None: ...
    def epoch_done(self, *args) -> None: ...
    def phase_done(self, *args) -> None: ...


def tiny_split(count: int, seed: int) -> Split:
    """8x8 images whose class is the row holding a bright stripe: learnable in one epoch."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 8
    images = torch.randint(0, 40, (count, 1, 8, 8), generator=generator, dtype=torch.uint8)
    images[torch.arange(count), 0, labels, :] = 250
    return Split(images, labels)


def batches(split: Split, shuffle: bool = False) -> InMemoryBatches:
    return InMemoryBatches(split, [0.2], [0.3], 16, torch.device("cpu"), shuffle)


def make_context(tmp_path: Path) -> StageContext:
    train, val, test = tiny_split(96, 0), tiny_split(32, 1), tiny_split(32, 2)
    settings = PhaseSettings(0, lambda parameters: torch.optim.Adam(parameters, lr=0.01))

    def train_for(phase: str, model: nn.Module, objective, epochs: int):
        settings.epochs = epochs
        return train_phase(phase, model, objective, batches(train, True), batches(val), batches(test), settings, Silent())

    splits = {"train": train, "val": val, "test": test}
    return StageContext(
        run_dir=tmp_path, objective=CrossEntropy(), train=train_for,
        evaluate=lambda model, split: evaluate(model, batches(splits[split])),
        batches=lambda split, device: batches(splits[split]),
        latency_inputs=next(iter(batches(test))).inputs, latency_repeats=3,
    )


def student(hidden=(32, 16)) -> nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", (1, 8, 8), 8, hidden=list(hidden))


def prunable_zeros(model: nn.Module) -> tuple[int, int]:
    weights = [module.weight for module, _ in prunable_weights(model)]
    return sum(int((weight == 0).sum()) for weight in weights), sum(weight.numel() for weight in weights)


@pytest.mark.parametrize("amount", [0.2, 0.37, 0.9])
def test_prune_zeroes_exactly_the_requested_fraction(tmp_path: Path, amount: float) -> None:
    model = student()
    assert prunable_zeros(model)[0] == 0
    outcome = PruneStage(amount=amount).apply(model, make_context(tmp_path))
    zeros, total = prunable_zeros(outcome.model)
    assert zeros == round(amount * total)  # 64*32 + 32*16 + 16*8 = 2688 weights
    assert prunable_zeros(model)[0] == 0, "the distilled student itself must stay unpruned"
    assert not any(hasattr(module, "weight_mask") for module in outcome.model.modules()), "pruning made permanent"
    assert 0 <= make_context(tmp_path).evaluate(outcome.model, "test") <= 1
    assert torch.isfinite(outcome.model(torch.randn(4, 1, 8, 8))).all()
    assert outcome.weights.is_file()


def test_fine_tuned_sparsity_is_kept(tmp_path: Path) -> None:
    model = student()
    stage = PruneStage(amount=0.5, steps=2, finetune_epochs=2)
    outcome = stage.apply(model, make_context(tmp_path))
    zeros, total = prunable_zeros(outcome.model)
    assert zeros == round(0.5 * total)  # masks dropped during fine-tuning would leave step 1's zeros regrown
    survivors = [module.weight != 0 for module, _ in prunable_weights(outcome.model)]
    changed = [
        not torch.equal(after.weight[mask], before.weight[mask])
        for (after, _), (before, _), mask in zip(prunable_weights(outcome.model), prunable_weights(model), survivors)
    ]
    assert all(changed), "fine-tuning must have updated the surviving weights"
    assert outcome.result is not None and outcome.result.best_epoch >= 1


def test_channel_pruning_zeroes_whole_rows_and_keeps_the_classifier(tmp_path: Path) -> None:
    outcome = PruneStage(amount=0.25, structure="channel").apply(student(), make_context(tmp_path))
    layers = [module for module, _ in prunable_weights(outcome.model)]
    for layer in layers[:-1]:
        dead_rows = int((layer.weight.abs().sum(dim=1) == 0).sum())
        assert dead_rows == round(0.25 * layer.out_features)
    assert int((layers[-1].weight == 0).sum()) == 0


@pytest.mark.parametrize("scheme", ["dynamic_int8", "weight_only_int8", "static_int8", "qat_int8"])
def test_quantized_model_is_smaller_close_and_round_trips(tmp_path: Path, scheme: str) -> None:
    model = student(hidden=(256, 256)).eval()
    inputs = next(iter(batches(tiny_split(32, 3)))).inputs
    outcome = QuantizeStage(scheme).apply(model, make_context(tmp_path))
    fp32_file = tmp_path / "fp32.safetensors"
    save_weights(fp32_file, model)
    assert size_mb(outcome.weights) < 0.4 * size_mb(fp32_file)  # int8 weights: ~1/4 of fp32 plus scales
    with torch.inference_mode():
        reference, quantized = model(inputs), outcome.model(inputs)
    if scheme != "qat_int8":  # QAT trains further, so its outputs are not meant to match the fp32 model's
        # Stated tolerance: logits within 2% of the largest |fp32 logit|, and the same predicted class.
        assert (quantized - reference).abs().max() <= 0.02 * reference.abs().max()
        assert torch.equal(quantized.argmax(1), reference.argmax(1))
    else:
        assert outcome.result is not None and outcome.result.best_epoch == 1
        assert make_context(tmp_path).evaluate(outcome.model, "test") > 0.5  # 8 classes, learnt in one epoch
    fresh = student(hidden=(256, 256))
    nn.init.zeros_(fresh[1].weight)  # different weights before loading: the file must supply them all
    loaded = load_quantized(outcome.weights, fresh)
    with torch.inference_mode():
        assert torch.equal(loaded(inputs), quantized)
    assert count_nonzero(loaded) == count_nonzero(outcome.model)
    with pytest.raises(ConfigError, match="does not match the model"):
        load_quantized(outcome.weights, student(hidden=(256, 128)))


def test_bad_inputs_give_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"amount=1.5 is outside \(0, 1\)") as error:
        PruneStage(amount=1.5)
    assert "\n" not in error.value.one_line()
    with pytest.raises(ConfigError, match="amount=0"):
        PruneStage(amount=0.0)
    convolutional = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ConfigError, match="no nn.Linear layer") as error:
        QuantizeStage().check(convolutional)
    assert "\n" not in error.value.one_line()
    with pytest.raises(ConfigError, match="unknown quantisation scheme"):
        QuantizeStage("int4_magic")
    with pytest.raises(ConfigError, match="must be the last stage"):
        check_stage_order(["quantize", "prune"])
    with pytest.raises(ConfigError, match="twice"):
        check_stage_order(["prune", "prune"])
    with pytest.raises(ConfigError) as error:
        STAGES.get("prun")
    assert "unknown compression stage 'prun' (did you mean 'prune'?" in error.value.one_line()


def test_missing_torchao_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "torchao", None)
    with pytest.raises(ConfigError) as error:
        require_torchao()
    assert "pip install kdrun[compress]" in error.value.one_line()


def test_train_with_prune_and_quantize_writes_the_extra_rows(kdrun_in) -> None:
    fine_tuning = ["compression.prune.steps=2", "compression.prune.finetune_epochs=1"]
    result, run_dir = kdrun_in("compress=[prune,quantize]", *fine_tuning, *TINY)
    assert result.returncode == 0, result.stderr
    fine_tuned = [record for record in read_metrics(run_dir) if record["phase"].startswith("prune_step")]
    assert [record["phase"] for record in fine_tuned] == ["prune_step1", "prune_step2"]
    assert all(set(record["loss"]) == {"ce", "kd"} for record in fine_tuned)  # the distillation loss is kept
    phases = read_summary(run_dir)["phases"]
    assert list(phases) == ["teacher", "independent", "distilled", "pruned", "quantized"]
    fields = {"source", "test_acc", "test_acc_last", "best_epoch", "best_val_acc", "params", "seconds", "weights",
              "nonzero_params", "size_mb", "latency_ms"}
    for phase in ("pruned", "quantized"):
        assert fields <= set(phases[phase]), phase
        assert Path(phases[phase]["weights"]).stat().st_size / 1e6 == pytest.approx(phases[phase]["size_mb"])
        assert phases[phase]["latency_ms"] > 0
    assert {"size_mb", "latency_ms", "nonzero_params"} <= set(phases["distilled"])
    # digits student mlp [20, 20]: 64*20 + 20*20 + 20*10 = 1880 weights, 20% of them = 376 zeroed.
    assert phases["pruned"]["nonzero_params"] == phases["distilled"]["nonzero_params"] - 376
    assert phases["quantized"]["source"] == "from pruned"
    loaded = load_quantized(Path(phases["quantized"]["weights"]), build_model("mlp", (1, 8, 8), 10, hidden=[20, 20], dropout=0.0))
    assert count_nonzero(loaded) == phases["quantized"]["nonzero_params"]  # the README's load example
    for row in ("pruned", "quantized"):
        assert row in result.stdout


def test_train_rejects_bad_amount_before_training(kdrun_in) -> None:
    result, run_dir = kdrun_in("compress=[prune]", "compression.prune.amount=1.5", *TINY)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("kdrun: error:")]
    assert lines and "compression.prune.amount=1.5 is outside (0, 1)" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (run_dir / "summary.json").exists()


def test_quantization_aware_training_keeps_a_pruned_students_zeros(tmp_path: Path) -> None:
    context = make_context(tmp_path)
    pruned = PruneStage(amount=0.5).apply(student(), context).model
    quantized = QuantizeStage("qat_int8").apply(pruned, context).model
    weights = [module.weight for module, _ in prunable_weights(pruned)]
    zeros = sum(int((weight == 0).sum()) for weight in weights)
    assert zeros == round(0.5 * sum(weight.numel() for weight in weights))
    biases = sum(module.bias.numel() for module, _ in prunable_weights(pruned))
    assert count_nonzero(quantized) <= count_nonzero(pruned) + biases  # int8 data keeps every pruned zero
    int8_zeros = sum(int((module.weight.qdata == 0).sum()) for module in quantized.modules() if isinstance(module, nn.Linear))
    assert int8_zeros >= zeros

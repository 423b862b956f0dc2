"""The classifier whose features measure FID when Inception weights are unavailable: trained, cached or loaded.

It is an ordinary kdrun model (`fid.classifier.name` from the model registry) trained with kdrun's
one training loop on the labelled training split, selected on validation, tested once; trained
classifiers are shared across runs in `<cache_dir>/fid_classifiers/`, keyed like cached teachers.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from kdrun.data import DataSplits
from kdrun.data.batches import InMemoryBatches
from kdrun.files import load_weights
from kdrun.methods import CrossEntropy
from kdrun.model_cache import ModelCache, cache_key
from kdrun.models import build_model, check_output, count_parameters
from kdrun.training.loop import PhaseSettings, evaluate, train_phase

log = logging.getLogger("kdrun")

PHASE = "fid_classifier"


class EpochLines:
    """The loop's observer: progress goes to the display, each epoch one line in train.log."""

    def __init__(self, display: Any) -> None:
        self.display = display

    def phase_started(self, phase: str, epochs: int, steps_per_epoch: int) -> None:
        self.display.phase_started(phase, epochs, steps_per_epoch)

    def step_done(self, phase: str) -> None:
        self.display.step_done(phase)

    def epoch_done(self, record: Any) -> None:
        log.info("%s: epoch %d  ce %.4f  train %.4f  val %.4f", record.phase, record.epoch, record.loss["ce"],
                 record.train_acc, record.val_acc)

    def phase_done(self, phase: str) -> None:
        self.display.phase_done(phase)


def obtain_classifier(data: DataSplits, options: dict[str, Any], training: dict[str, Any], seed: int, cache_dir: Path,
                      device: torch.device, display: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The FID classifier from `checkpoint`, else the cache, else trained and cached; with its summary entry."""
    options = dict(options)
    name, checkpoint = options.pop("name"), options.pop("checkpoint", None)
    torch.manual_seed(seed)
    model = build_model(name, data.input_shape, data.num_classes, **options)
    check_output(model, data.input_shape, data.num_classes)
    model = model.to(device)
    batches = {split: InMemoryBatches(getattr(data, split), data.mean, data.std, 512, device, shuffle=False)
               for split in ("val", "test")}
    started = time.perf_counter()
    if checkpoint:
        path = Path(str(checkpoint)).expanduser().resolve()
        load_weights(path, model, "fid.classifier.checkpoint")
        info = {"source": "checkpoint", "best_val_acc": evaluate(model, batches["val"]), "weights": str(path)}
    else:
        info = _cached_or_trained(model, name, options, training, data, seed, cache_dir, device, batches, display)
    info.setdefault("test_acc", evaluate(model, batches["test"]))
    info.update(name=name, params=count_parameters(model), seconds=time.perf_counter() - started)
    log.info("FID classifier %s (%s): test accuracy %.4f", name, info["source"], info["test_acc"])
    return model.eval(), info


def _cached_or_trained(model: nn.Module, name: str, options: dict[str, Any], training: dict[str, Any], data: DataSplits,
                       seed: int, cache_dir: Path, device: torch.device, batches: dict[str, InMemoryBatches],
                       display: Any) -> dict[str, Any]:
    identity = {
        "purpose": "fid_features", "data": {"name": data.name, "fingerprint": data.fingerprint(), "classes": data.class_names},
        "model": {"name": name, **options}, "training": {**training, "normalisation": [data.mean, data.std]}, "seed": seed,
    }
    cache = ModelCache(cache_dir, "fid_classifiers")
    entry = cache.entry(name, cache_key(identity))
    with cache.locked(entry):
        meta: Optional[dict[str, Any]] = cache.load(entry, model)
        if meta is not None:
            log.info("FID classifier: loaded from cache %s", entry)
            return {"source": "cache", "best_val_acc": meta["result"]["best_val_acc"], "weights": str(entry / "weights.safetensors")}
        lr = float(training["lr"])
        settings = PhaseSettings(int(training["epochs"]), lambda parameters: torch.optim.Adam(parameters, lr=lr))
        train_batches = InMemoryBatches(data.train, data.mean, data.std, int(training["batch_size"]), device, shuffle=True, seed=seed)
        result = train_phase(PHASE, model, CrossEntropy(), train_batches, batches["val"], batches["test"], settings,
                             EpochLines(display))
        summary = result.summary(count_parameters(model)).to_json()
        cache.store(entry, model, {"identity": identity, "result": summary})
        log.info("FID classifier: trained and stored in cache %s", entry)
    return {"source": "trained", "best_val_acc": result.best_val_acc, "test_acc": result.test_acc,
            "weights": str(entry / "weights.safetensors")}

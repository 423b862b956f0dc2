"""Trained models (teachers, independent students), shared across runs, keyed by a hash of
everything that determines them.

An entry is a folder `<cache_dir>/<kind>/<model>-<key>/` (kind: `teachers` or `students`) with `weights.safetensors` and
`meta.json` (the key's inputs, the weights' sha256, the training result). It appears atomically
(built in a temp folder, then renamed), is checked against its hash before use, and is written
under a cross-process file lock so that concurrent runs train a given teacher only once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from filelock import FileLock
from torch import nn

from kdrun.errors import ConfigError
from kdrun.files import load_weights, save_weights, sha256_of, write_json_atomic

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the meaning of an entry changes, so old entries stop matching


def cache_key(identity: dict[str, Any]) -> str:
    """A short, stable hash of a JSON-able description of the teacher's data, model and training."""
    canonical = json.dumps({"format": CACHE_FORMAT, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def checkpoint_logits_entry(cache_dir: Path, checkpoint: Path, identity: dict[str, Any], device_type: str) -> Path:
    """Where the training-set logits of a `teacher.checkpoint` teacher are kept between runs.

    Such a teacher has no cache entry of its own, yet every run of a sweep that passes the same file
    needs the same logits (a 27 s pass for a small CNN over Fashion-MNIST). The key is the file's
    content (not its path), the model, the data split and what changes the logits' rounding.
    """
    key = cache_key({
        "checkpoint_sha256": sha256_of(checkpoint), "model": identity["model"], "data": identity["data"],
        "normalisation": identity["training"]["normalisation"], "precision": identity["training"]["precision"],
        "device": device_type,
    })
    return cache_dir / "checkpoint_teachers" / f"{identity['model']['name']}-{key}"


class ModelCache:
    """One kind of cached model; a sweep over alpha/T trains each teacher and independent student once."""

    def __init__(self, root: Path, kind: str = "teachers") -> None:
        self.root = root / kind
        self.kind = kind

    def entry(self, model_name: str, key: str) -> Path:
        return self.root / f"{model_name}-{key}"

    @contextlib.contextmanager
    def locked(self, entry: Path) -> Iterator[None]:
        """Hold the entry's lock: one process trains, the others wait and then load."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"cannot create the model cache {self.root} ({error.strerror})", "set cache_dir=<writable dir>") from None
        with FileLock(str(entry) + ".lock"):
            yield

    def load(self, entry: Path, model: nn.Module) -> Optional[dict[str, Any]]:
        """Load a valid entry into `model` and return its meta; None if absent or invalid (then retrain)."""
        meta_path, weights_path = entry / "meta.json", entry / "weights.safetensors"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if sha256_of(weights_path) != meta["weights_sha256"]:
                raise ValueError("weights do not match their recorded hash")
            load_weights(weights_path, model, f"cached model ({self.kind})")
        except (OSError, ValueError, KeyError, ConfigError) as error:
            log.warning("cache entry %s is invalid (%s); training it again", entry, error)
            self._discard(entry)
            return None
        return meta

    def store(self, entry: Path, model: nn.Module, meta: dict[str, Any]) -> None:
        """Write the entry atomically: complete folder under a temp name, then one rename."""
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{entry.name}."))
        try:
            digest = save_weights(staging / "weights.safetensors", model)
            write_json_atomic(staging / "meta.json", {**meta, "weights_sha256": digest})
            self._discard(entry)
            os.replace(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _discard(entry: Path) -> None:
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)


TeacherCache = ModelCache  # the original name, kept for existing imports

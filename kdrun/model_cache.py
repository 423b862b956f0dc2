"""Trained models (teachers, independent students), shared across runs, keyed by a hash of
everything that determines them.

An entry is a folder `<cache_dir>/<kind>/<model>-<key>/` (kind: `teachers` or `students`) with `weights.safetensors` and
`meta.json` (the key's inputs, the weights' sha256, the training result). It appears atomically
(built in a temp folder, then renamed), is checked against its hash before use, and is written
under a cross-process file lock so that concurrent runs train a given teacher only once.

Under torchrun rank 0 holds the lock and decides, all ranks follow in lockstep. If every rank took
the entry's file lock, rank 1 would wait for rank 0's lock while rank 0 waits for rank 1 inside
DDP's first gradient exchange: a deadlock. So only rank 0 locks (which still serialises it against
other runs, on this node or, with cache_dir on a shared filesystem, on others), rank 0 checks the
entry and broadcasts the outcome:
- hit: every rank loads the same entry (complete, since entries appear atomically and rank 0
  holds the lock while the others read it);
- miss: every rank trains the model together under DDP and only rank 0 stores it.
Nothing here is specific to distillation: any command that trains reusable models can keep them here.
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
from typing import TYPE_CHECKING, Any, Iterator, Optional

from filelock import FileLock

from kdrun import parallel
from kdrun.errors import ConfigError
from kdrun.files import load_weights, save_weights, sha256_of, write_json_atomic

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the meaning of an entry changes, so old entries stop matching


def cache_key(identity: dict[str, Any]) -> str:
    """A short, stable hash of a JSON-able description of a model's data, architecture and training."""
    canonical = json.dumps({"format": CACHE_FORMAT, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class ModelCache:
    """One kind of cached model; a sweep over alpha/T trains each teacher and independent student once."""

    def __init__(self, root: Path, kind: str = "teachers") -> None:
        self.root = root / kind
        self.kind = kind

    def entry(self, model_name: str, key: str) -> Path:
        return self.root / f"{model_name}-{key}"

    @contextlib.contextmanager
    def locked(self, entry: Path) -> Iterator[None]:
        """Hold the entry's lock: one process trains, the others wait and then load (under torchrun: rank 0's)."""
        if not parallel.is_main():
            yield
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"cannot create the model cache {self.root} ({error.strerror})", "set cache_dir=<writable dir>") from None
        with FileLock(str(entry) + ".lock"):
            yield

    def load(self, entry: Path, model: nn.Module) -> Optional[dict[str, Any]]:
        """Load a valid entry into `model` and return its meta; None if absent or invalid (then retrain).

        Under torchrun rank 0 looks, and every rank gets its answer (and the same weights).
        """
        if not parallel.is_active():
            return self._load(entry, model)
        meta = parallel.broadcast_object(self._load(entry, model) if parallel.is_main() else None)
        if meta is not None and not parallel.is_main():
            load_weights(entry / "weights.safetensors", model, f"cached model ({self.kind})")
        return meta

    def _load(self, entry: Path, model: nn.Module) -> Optional[dict[str, Any]]:
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
        """Write the entry atomically: complete folder under a temp name, then one rename (rank 0 only)."""
        if not parallel.is_main():
            return
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


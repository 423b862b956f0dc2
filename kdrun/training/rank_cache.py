"""The model cache under torchrun: rank 0 holds the lock and decides, all ranks follow in lockstep.

If every rank took the entry's file lock, rank 1 would wait for rank 0's lock while rank 0 waits
for rank 1 inside DDP's first gradient exchange: a deadlock. So only rank 0 locks (which still
serialises it against other runs, on this node or, with cache_dir on a shared filesystem, on
others), rank 0 checks the entry and broadcasts the outcome:
- hit: every rank loads the same entry (complete, since entries appear atomically and rank 0
  holds the lock while the others read it);
- miss: every rank trains the model together under DDP and only rank 0 stores it.
In a single process this is exactly ModelCache.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, ContextManager, Optional

from torch import nn

from kdrun.files import load_weights
from kdrun.training import distributed
from kdrun.training.teacher_cache import ModelCache


class RankAwareCache(ModelCache):
    """ModelCache whose lock, lookup and store are rank 0's; see the module docstring."""

    def locked(self, entry: Path) -> ContextManager[None]:
        if distributed.is_main():
            return super().locked(entry)
        return contextlib.nullcontext()

    def load(self, entry: Path, model: nn.Module) -> Optional[dict[str, Any]]:
        if not distributed.is_active():
            return super().load(entry, model)
        meta = super().load(entry, model) if distributed.is_main() else None
        meta = distributed.broadcast_object(meta)
        if meta is not None and not distributed.is_main():
            load_weights(entry / "weights.safetensors", model, f"cached model ({self.kind})")
        return meta

    def store(self, entry: Path, model: nn.Module, meta: dict[str, Any]) -> None:
        if distributed.is_main():
            super().store(entry, model, meta)

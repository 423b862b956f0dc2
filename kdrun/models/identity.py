"""What a cache key must know about a model beyond its config: file contents, not just paths.

`teacher.weights=/data/a.safetensors` names a file whose content can change under the same path, and
a custom model's class lives in the user's code, which changes between runs. A cached teacher built
from other weights or other code must not be reused, so the key holds their sha256 hashes; a model
builder adds its own parts through an `identity(options)` attribute (custom: the target's source file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdrun.files import sha256_of
from kdrun.models.registry import MODELS


def architecture_identity(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The model part of a cache key: name, options, and the hashes of what the options point at."""
    identity: dict[str, Any] = {"name": name, **options}
    weights = options.get("weights")
    if isinstance(weights, str) and weights not in ("", "none", "DEFAULT"):
        path = Path(weights).expanduser().resolve()
        if path.is_file():
            identity["weights_sha256"] = sha256_of(path)
    extra = getattr(MODELS.get(name), "identity", None)
    if extra is not None:
        identity.update(extra(options))
    return identity

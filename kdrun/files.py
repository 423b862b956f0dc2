"""Every file kdrun writes goes through here: atomic (temp + fsync + rename), weights as safetensors.

A reader therefore sees either the old file or the complete new one, never half of one, even if
the process is killed mid-write.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdrun.errors import ConfigError
from kdrun.parallel import is_main

if TYPE_CHECKING:  # torch is imported by the functions that read or write tensors: reports and help stay torch-free
    import torch
    from torch import nn


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """`data` as the whole new content of `path`; under torchrun only the writing rank writes (kdrun/parallel.py)."""
    if not is_main():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove(path: Path) -> None:
    """Delete a file kdrun wrote (a stale summary.json, an unreadable checkpoint); a no-op if it is gone."""
    if is_main():
        path.unlink(missing_ok=True)


def append_line(path: Path, line: str) -> None:
    """Append one line and sync it to disk (metrics.jsonl, sweep.jsonl): a kill loses at most the line being written."""
    if not is_main():
        return
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(line + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def write_json_atomic(path: Path, payload: Any) -> None:
    write_bytes_atomic(path, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())


def save_weights(path: Path, model: nn.Module, metadata: dict[str, str] | None = None) -> str:
    """Write the model's state dict as safetensors, atomically; returns the file's sha256."""
    from safetensors.torch import save

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    data = save(state, metadata=metadata)
    write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def save_tensor(path: Path, name: str, tensor: torch.Tensor) -> None:
    """One named tensor as safetensors, atomically (e.g. cached teacher logits)."""
    from safetensors.torch import save

    write_bytes_atomic(path, save({name: tensor.detach().cpu().contiguous()}))


def load_tensor(path: Path, name: str) -> torch.Tensor | None:
    """The named tensor from a safetensors file; None if the file is unreadable (callers recompute)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))[name]
    except (SafetensorError, OSError, KeyError):
        return None


def load_weights(path: Path, model: nn.Module, what: str) -> None:
    """Load weights into `model`: safetensors, or a torch file read with weights_only=True.

    Raises:
        ConfigError: missing, unreadable, unsafe or mismatched file, naming `what` it was meant for.
    """
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist", "check the path")
    state = read_state_dict(path, what)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [name for name in expected if name in state and tuple(state[name].shape) != tuple(expected[name].shape)]
    if missing or unexpected or wrong_shape:
        output_layer = list(expected)[-2:]  # weight and bias of the last layer: its rows are the classes
        if wrong_shape and not missing and not unexpected and set(wrong_shape) <= set(output_layer):
            name = wrong_shape[0]
            detail = f"its class count is {state[name].shape[0]}, the dataset has {expected[name].shape[0]} classes"
        elif wrong_shape:
            name = wrong_shape[0]
            detail = (f"a different architecture: shape of '{name}' is {tuple(state[name].shape)}, "
                      f"the config's model has {tuple(expected[name].shape)}")
        else:
            detail = f"a different architecture: missing keys {missing[:3]}, unexpected keys {unexpected[:3]}"
        raise ConfigError(f"{what} {path} does not match the configured model: {detail}", "pass the matching model config")
    model.load_state_dict(state)


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise ConfigError(f"{what} {path} is not a readable safetensors file ({error})", "replace it") from None
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for untrusted/corrupt pickles
        reason = " ".join(str(error).split())[:120]
        raise ConfigError(
            f"{what} {path} was refused: not a plain weights file ({reason})",
            "save weights as .safetensors or a plain state_dict",
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ConfigError(f"{what} {path} does not hold a state_dict of tensors", "save model.state_dict()")
    return state


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

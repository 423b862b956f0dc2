"""Picking the device (`auto` tries cuda, then mps, then cpu; an explicit device must exist; under torchrun
each rank its own GPU) and the number of CPU threads."""

from __future__ import annotations

import os
from typing import Any

import torch

from kdrun import parallel
from kdrun.errors import ConfigError


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"device '{requested}' is not a device name", "use auto, cpu, cuda, cuda:1 or mps") from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (device.index is None or device.index < torch.cuda.device_count()),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(device.type, False):
        raise ConfigError(f"device '{requested}' is not available on this machine", "use device=auto or device=cpu")
    return device


def place(device: torch.device) -> torch.device:
    """The device this rank trains on: cuda means cuda:LOCAL_RANK under torchrun (ranks on a node share no GPU).

    Raises:
        ConfigError: torchrun with a device type other than cuda and cpu.
    """
    if not parallel.is_active():
        return device
    if device.type == "cuda":
        return torch.device("cuda", parallel.topology().local_rank % torch.cuda.device_count())
    if device.type != "cpu":
        raise ConfigError(f"torchrun with device={device.type} is not supported", "use device=cuda or device=cpu")
    return device


def configure_threads(setting: Any, parallel_jobs: int) -> int:
    """CPU threads for this process; returns the number in effect.

    `auto` keeps torch's default (one thread per core), except when a parallel launcher runs several
    jobs at once (joblib, n_jobs > 1): then each job gets its share of the cores. Otherwise every job
    starts one thread per core, the cores are oversubscribed and spin-waiting threads slow all jobs
    down many times over (we measured a 12x slower epoch with two such processes on 2 cores).
    """
    if str(setting) == "auto":
        if parallel_jobs <= 1:
            return torch.get_num_threads()
        threads = max(1, (os.cpu_count() or 1) // parallel_jobs)
    else:
        threads = int(setting)  # config.validate has checked it is an integer >= 1
    torch.set_num_threads(threads)
    return threads


def parallel_jobs(launcher: Any) -> int:
    """How many jobs a Hydra launcher runs at once on this machine (joblib's n_jobs; -1 = every core)."""
    n_jobs = int(launcher.get("n_jobs", 1) or 1) if launcher is not None else 1
    return os.cpu_count() or 1 if n_jobs < 0 else n_jobs

"""Deterministic DDIM sampling with diffusers' DDIMScheduler, on the cosine schedule's time grid.

The baseline of the comparison (the teacher at few DDIM steps) is the field's maintained DDIM
implementation, not ours; the distillation target (target.py) uses kdrun's own DDIM step, and a
test checks that the two agree step by step.

The scheduler's discrete timestep k (0 .. grid_steps - 1) stands for time t = (k + 1) / grid_steps,
so its cumulative alphas are alpha(t)^2 of our schedule, and with `trailing` spacing a sampler of
n steps (n dividing grid_steps) visits exactly t = 1, 1 - 1/n, ..., 1/n and ends at the data
(set_alpha_to_one). Denoised predictions are clipped to [-1, 1] while sampling, as in the paper's code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from kdrun.diffusion.networks import import_diffusers
from kdrun.diffusion.schedule import CosineSchedule
from kdrun.diffusion.target import Denoiser


class DdimSampler:
    """n-step deterministic DDIM (eta = 0) for any n dividing `grid_steps`."""

    def __init__(self, schedule: CosineSchedule, grid_steps: int) -> None:
        self.grid_steps = grid_steps
        self.config = scheduler_config(schedule, grid_steps)

    def scheduler(self, steps: int) -> Any:
        """A fresh DDIMScheduler set to `steps` steps (set_timesteps mutates it, so one per sampling)."""
        diffusers = import_diffusers()
        scheduler = diffusers.DDIMScheduler(**self.config)
        scheduler.set_timesteps(steps)
        return scheduler

    def times(self, steps: int) -> torch.Tensor:
        """The times (float64) at which an n-step sampler evaluates the network, from t = 1 down."""
        return (self.scheduler(steps).timesteps.to(torch.float64) + 1) / self.grid_steps

    @torch.inference_mode()
    def sample(self, denoiser: Denoiser, noise: torch.Tensor, steps: int) -> torch.Tensor:
        """Images in [-1, 1] from `noise` (B, C, H, W) in `steps` network evaluations."""
        scheduler = self.scheduler(steps)
        z = noise
        for timestep in scheduler.timesteps:
            t = torch.full((z.shape[0],), (int(timestep) + 1) / self.grid_steps, device=z.device, dtype=z.dtype)
            v = denoiser(z, t)
            z = scheduler.step(v, timestep, z, eta=0.0, use_clipped_model_output=True).prev_sample
        return z


def scheduler_config(schedule: CosineSchedule, grid_steps: int) -> dict[str, Any]:
    """DDIMScheduler arguments that reproduce `schedule` on a grid of `grid_steps` times."""
    t = torch.arange(1, grid_steps + 1, dtype=torch.float64) / grid_steps
    alpha, _ = schedule.alpha_sigma(t)
    cumulative = alpha.square()
    previous = torch.cat([torch.ones(1, dtype=torch.float64), cumulative[:-1]])
    return {
        "num_train_timesteps": grid_steps, "trained_betas": (1 - cumulative / previous).tolist(),
        "prediction_type": "v_prediction", "clip_sample": True, "clip_sample_range": 1.0, "set_alpha_to_one": True,
        "timestep_spacing": "trailing", "steps_offset": 0, "thresholding": False,
    }


@dataclass
class Sampled:
    images: torch.Tensor   # (N, C, H, W) in [-1, 1], on the CPU
    seconds: float          # wall time of the network evaluations and scheduler steps


def sample_many(sampler: DdimSampler, denoiser: Denoiser, noise: torch.Tensor, steps: int, batch_size: int,
                device: torch.device) -> Sampled:
    """Sample for every row of `noise` (CPU, fixed per seed) in batches; the wall time is what a user waits."""
    started = time.perf_counter()
    parts = [sampler.sample(denoiser, chunk.to(device), steps).cpu() for chunk in noise.split(batch_size)]
    return Sampled(torch.cat(parts), time.perf_counter() - started)


def fixed_noise(count: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """The same starting noise for every sampler and step count (CPU generator: the same on every device)."""
    return torch.randn((count, *shape), generator=torch.Generator().manual_seed(seed))

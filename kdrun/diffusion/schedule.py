"""The paper's cosine noise schedule (in log-SNR form), the v-parameterisation, and the halving of steps.

Time t in [0, 1] maps to log-SNR lambda(t) = -2 log tan(a t + b), with b and a chosen so that
lambda(0) = logsnr_max and lambda(1) = logsnr_min (Salimans & Ho 2022, Sec. 4 and their code's
`cosine` schedule). The process is variance preserving: alpha^2 = sigmoid(lambda),
sigma^2 = sigmoid(-lambda), so alpha ~ cos(pi t / 2) and sigma ~ sin(pi t / 2).

t = 0 is the data itself (alpha = 1, sigma = 0 exactly): the last DDIM step returns the
denoised prediction, as the paper's sampler and diffusers' DDIMScheduler (set_alpha_to_one) do.

Coefficients are computed in float64 and cast to the images' dtype: the schedule spans 40 nats of
log-SNR, and the two-step target divides by a difference of alphas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kdrun.errors import ConfigError


@dataclass(frozen=True)
class CosineSchedule:
    """alpha(t), sigma(t) of the truncated cosine schedule."""

    logsnr_min: float = -20.0
    logsnr_max: float = 20.0

    def __post_init__(self) -> None:
        if not self.logsnr_min < self.logsnr_max:
            raise ConfigError(
                f"schedule.logsnr_min={self.logsnr_min} must be below schedule.logsnr_max={self.logsnr_max}",
                "the paper uses -20 and 20",
            )

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) in float64; t = 0 gives logsnr_max, t = 1 gives logsnr_min."""
        b = math.atan(math.exp(-0.5 * self.logsnr_max))
        a = math.atan(math.exp(-0.5 * self.logsnr_min)) - b
        return -2.0 * torch.log(torch.tan(a * t.to(torch.float64) + b))

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) in float64, with t == 0 exactly the clean data (1, 0)."""
        logsnr = self.logsnr(t)
        alpha, sigma = torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()
        at_data = t.to(torch.float64) == 0
        return torch.where(at_data, 1.0, alpha), torch.where(at_data, 0.0, sigma)


def broadcast(coefficient: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample coefficient (B,) shaped (B, 1, 1, 1) in the images' dtype, for elementwise use."""
    return coefficient.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def x_from_v(z: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The denoised image implied by a v prediction: x = alpha z - sigma v (v = alpha eps - sigma x)."""
    return broadcast(alpha, z) * z - broadcast(sigma, z) * v


def v_from_x(z: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The v that makes `x_from_v` return `x` (needs sigma > 0): v = (alpha z - x) / sigma."""
    return (broadcast(alpha, z) * z - x) / broadcast(sigma, z)


def halving_steps(start: int, target: int) -> list[int]:
    """The step counts of a progressive distillation: [start, start/2, ..., target].

    Raises:
        ConfigError: for counts below 1, or a target that halving from `start` never reaches.
    """
    for key, value in (("teacher.sampling_steps", start), ("distill.target_steps", target)):
        if value < 1:
            raise ConfigError(f"{key}={value} must be >= 1", "sampling takes at least one step")
    counts = [start]
    while counts[-1] > target and counts[-1] % 2 == 0:
        counts.append(counts[-1] // 2)
    if counts[-1] != target:
        reachable = ", ".join(str(count) for count in counts)
        example = target * 2 ** max(1, (start // max(target, 1)).bit_length() - 1)
        raise ConfigError(
            f"distill.target_steps={target} is not reached by halving teacher.sampling_steps={start} (reachable: {reachable})",
            f"make teacher.sampling_steps the target times a power of two, e.g. teacher.sampling_steps={example} distill.target_steps={target}",
        )
    return counts


def time_grid(steps: int) -> torch.Tensor:
    """The times a `steps`-step sampler visits, from noise to data: 1, (steps-1)/steps, ..., 0 (float64)."""
    return torch.arange(steps, -1, -1, dtype=torch.float64) / steps

"""The training objectives: denoising (the teacher) and the two-DDIM-step target (Algorithm 2).

Both losses live in x-space with the paper's truncated-SNR weighting,
    L = max(SNR(t), 1) * ||x_target - x_hat(z_t)||^2,   SNR = alpha_t^2 / sigma_t^2,
(Salimans & Ho 2022, Sec. 4; `snr_trunc` in their code). A denoiser predicts v; x_hat = alpha z - sigma v.

Algorithm 2, one student step from t to t - 1/N equals two teacher DDIM steps t -> t - 0.5/N -> t - 1/N:
    z' = alpha' x_T(z_t) + (sigma'/sigma_t)(z_t - alpha_t x_T(z_t))          (teacher DDIM step)
    z'' = alpha'' x_T(z') + (sigma''/sigma')(z' - alpha' x_T(z'))              (teacher DDIM step)
    x_target = (z'' - (sigma''/sigma_t) z_t) / (alpha'' - (sigma''/sigma_t) alpha_t)
so that a student DDIM step with x_hat = x_target lands exactly on z''. Teacher predictions are not
clipped here (the paper's code clips only when sampling).
"""

from __future__ import annotations

from typing import Callable

import torch

from kdrun.diffusion.schedule import CosineSchedule, broadcast, x_from_v

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z (B,C,H,W), t (B,)) -> v (B,C,H,W)


def predict_x(denoiser: Denoiser, z: torch.Tensor, t: torch.Tensor, schedule: CosineSchedule) -> torch.Tensor:
    """The denoised image x_hat(z_t) of a v-predicting network."""
    alpha, sigma = schedule.alpha_sigma(t)
    return x_from_v(z, denoiser(z, t.to(z.dtype)), alpha, sigma)


def ddim_step(denoiser: Denoiser, z_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, schedule: CosineSchedule,
              clip: bool = False) -> torch.Tensor:
    """One deterministic DDIM step z_t -> z_s (s < t, per sample); `clip` bounds x_hat to [-1, 1] as sampling does."""
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    alpha_s, sigma_s = schedule.alpha_sigma(s)
    x_hat = predict_x(denoiser, z_t, t, schedule)
    if clip:
        x_hat = x_hat.clamp(-1.0, 1.0)
    eps_hat = (z_t - broadcast(alpha_t, z_t) * x_hat) / broadcast(sigma_t, z_t)
    return broadcast(alpha_s, z_t) * x_hat + broadcast(sigma_s, z_t) * eps_hat


def two_step_target(teacher: Denoiser, z_t: torch.Tensor, t: torch.Tensor, student_steps: int,
                    schedule: CosineSchedule) -> torch.Tensor:
    """x_target of Algorithm 2 for a student that samples in `student_steps` steps (t on its grid, > 0)."""
    middle, end = t - 0.5 / student_steps, t - 1.0 / student_steps
    z_middle = ddim_step(teacher, z_t, t, middle, schedule)
    z_end = ddim_step(teacher, z_middle, middle, end, schedule)
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    alpha_end, sigma_end = schedule.alpha_sigma(end)
    ratio = sigma_end / sigma_t
    return (z_end - broadcast(ratio, z_t) * z_t) / broadcast(alpha_end - ratio * alpha_t, z_t)


def truncated_snr_weight(t: torch.Tensor, schedule: CosineSchedule) -> torch.Tensor:
    """max(SNR(t), 1) per sample (float64): the x-space loss weight of the paper."""
    alpha, sigma = schedule.alpha_sigma(t)
    return torch.clamp_min(alpha.square() / sigma.square(), 1.0)


def weighted_x_loss(denoiser: Denoiser, z_t: torch.Tensor, t: torch.Tensor, x_target: torch.Tensor,
                    schedule: CosineSchedule) -> torch.Tensor:
    """Batch mean of max(SNR, 1) * (per-pixel mean squared error of x_hat against x_target)."""
    error = (predict_x(denoiser, z_t, t, schedule) - x_target).square().flatten(1).mean(dim=1)
    return (truncated_snr_weight(t, schedule).to(error.dtype) * error).mean()


def noisy(x: torch.Tensor, t: torch.Tensor, schedule: CosineSchedule, generator: torch.Generator) -> torch.Tensor:
    """z_t = alpha_t x + sigma_t eps, eps ~ N(0, I) from `generator`."""
    alpha, sigma = schedule.alpha_sigma(t)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return broadcast(alpha, x) * x + broadcast(sigma, x) * noise


def denoising_terms(model: Denoiser, x: torch.Tensor, schedule: CosineSchedule,
                    generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The teacher's loss: continuous t ~ U(0, 1], target the clean image."""
    t = 1.0 - torch.rand(x.shape[0], generator=generator, device=x.device, dtype=torch.float64)  # (0, 1]: sigma > 0
    return {"denoise": weighted_x_loss(model, noisy(x, t, schedule, generator), t, x, schedule)}


def distillation_terms(student: Denoiser, teacher: Denoiser, x: torch.Tensor, student_steps: int,
                       schedule: CosineSchedule, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Algorithm 2's loss: t = i / N with i ~ U{1..N}, target from two teacher DDIM steps (no gradient)."""
    index = torch.randint(1, student_steps + 1, (x.shape[0],), generator=generator, device=x.device)
    t = index.to(torch.float64) / student_steps
    z_t = noisy(x, t, schedule, generator)
    with torch.no_grad():
        x_target = two_step_target(teacher, z_t, t, student_steps, schedule)
    return {"distill": weighted_x_loss(student, z_t, t, x_target, schedule)}

"""Cosine noise schedule (Nichol & Dhariwal 2021) shared by training and sampling.

``alphas_cumprod[t]`` is ᾱ_t for integer t in ``[0, T)``; x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε.
"""

from __future__ import annotations

import math

import torch

NUM_TRAIN_TIMESTEPS = 1000


def cosine_alphas_cumprod(num_timesteps: int = NUM_TRAIN_TIMESTEPS, s: float = 0.008,
                          max_beta: float = 0.999) -> torch.Tensor:
    """Return ᾱ_t (float64, shape ``(num_timesteps,)``) of the cosine schedule.

    β_t = 1 − f(t+1)/f(t) is clipped at ``max_beta`` as in the original paper, so ᾱ
    never reaches exactly 0.
    """
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be ≥ 2, got {num_timesteps}")

    def f(t: float) -> float:
        return math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1.0 - f(i + 1) / f(i), max_beta) for i in range(num_timesteps)]
    alphas = 1.0 - torch.tensor(betas, dtype=torch.float64)
    return torch.cumprod(alphas, dim=0)


def ddim_timesteps(steps: int, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """Evenly spaced, strictly decreasing integer timesteps from T−1 down to 0."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be between 1 and {num_timesteps}, got {steps}")
    if steps == 1:
        return [num_timesteps - 1]
    ts = torch.linspace(num_timesteps - 1, 0, steps).round().long().tolist()
    return ts


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Noise a clean batch ``x0`` (N,C,H,W) to timesteps ``t`` (N,) with ``noise``."""
    a = alphas_cumprod.to(device=x0.device)[t].to(x0.dtype).view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise

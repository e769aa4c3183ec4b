"""Richardson–Lucy deconvolution with the same forward model as the guided sampler.

x ← x · Aᵀ(y / (A x + B)) / (Aᵀ1 − λ_TV · div(∇x / |∇x|))

(Dey et al. 2006 for the TV term). Without TV every iteration is an EM step and never
decreases the Poisson likelihood. Data are expected in photon units; read noise enters
through the shifted-Poisson model (y + s², μ + s²) as in :class:`~pkl_dg.guidance.PoissonKL`;
pixels outside the forward model's mask (saturated ones) are left out of both Aᵀ terms.
"""

from __future__ import annotations

from typing import Iterator

import torch

from pkl_dg.guidance.likelihoods import EPS
from pkl_dg.physics.forward import ForwardModel


def _tv_divergence(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """div(∇x/|∇x|) with forward differences and their adjoint (backward) differences."""
    dx = torch.diff(x, dim=-1, append=x[..., -1:])
    dy = torch.diff(x, dim=-2, append=x[..., -1:, :])
    mag = torch.sqrt(dx ** 2 + dy ** 2 + eps)
    nx, ny = dx / mag, dy / mag
    div_x = nx - torch.nn.functional.pad(nx[..., :-1], (1, 0))
    div_y = ny - torch.nn.functional.pad(ny[..., :-1, :], (0, 0, 1, 0))
    return div_x + div_y


def initial_estimate(y: torch.Tensor, fm: ForwardModel) -> torch.Tensor:
    """A flat image with the data's mean signal above background (the usual RL start)."""
    level = (y - fm.background).mean().clamp(min=1e-3)
    return torch.full_like(y, float(level))


def richardson_lucy_iter(y: torch.Tensor, fm: ForwardModel, iterations: int,
                         tv_weight: float = 0.0, x0: torch.Tensor | None = None
                         ) -> Iterator[torch.Tensor]:
    """Yield the estimate after each of ``iterations`` RL iterations (photon units)."""
    if iterations < 1:
        raise ValueError(f"iterations must be ≥ 1, got {iterations}")
    if tv_weight < 0:
        raise ValueError(f"TV weight must be ≥ 0, got {tv_weight}")
    s2 = fm.read_noise_var
    ys = (y + s2).clamp(min=0)
    norm = fm.adjoint_ones(y)
    x = initial_estimate(y, fm) if x0 is None else x0.clone()
    for _ in range(iterations):
        ratio = fm.A_adjoint(fm.weight(ys / (fm.mean(x).clamp(min=0) + s2 + EPS)))
        denom = norm - tv_weight * _tv_divergence(x) if tv_weight > 0 else norm
        x = x * ratio / denom.clamp(min=1e-6)
        yield x


def richardson_lucy(y: torch.Tensor, fm: ForwardModel, iterations: int,
                    tv_weight: float = 0.0) -> torch.Tensor:
    """The estimate after ``iterations`` RL iterations."""
    x = None
    for x in richardson_lucy_iter(y, fm, iterations, tv_weight):
        pass
    return x

"""Poisson discrepancy principle: how far a fit should go before it fits the noise.

The Poisson deviance of data y against a model mean μ,
    D = 2 Σ [y·log(y/μ) − (y − μ)],
has the expectation Σ E_D(μ_i) when y really is Poisson(μ) (E_D(μ) → 1 + 1/(6μ) for large μ,
less than 1 for dim pixels). A fit whose deviance is below that expectation is fitting
noise: iterating a data-consistency step further only adds noise-born detail. Bertero et
al. (Inverse Problems 26, 2010) use this to stop Richardson–Lucy; the guided sampler uses it
to stop each diffusion step's sub-iterations (so the number of data-consistency iterations
adapts to the photon count, as the best fixed count does in DESIGN §7).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import special, stats

_GRID = np.geomspace(1e-3, 1e3, 400)


def _expected_deviance_np(mu: np.ndarray) -> np.ndarray:
    out = np.empty_like(mu)
    for i, m in enumerate(mu):
        kmax = int(m + 12 * np.sqrt(m) + 30)
        k = np.arange(kmax + 1, dtype=np.float64)
        pmf = stats.poisson.pmf(k, m)
        term = special.xlogy(k, k / m) - (k - m)
        out[i] = 2 * np.sum(pmf * term)
    return out


_TABLE = torch.from_numpy(_expected_deviance_np(_GRID))
_LOG_GRID = torch.from_numpy(np.log(_GRID))


def expected_deviance(mu: torch.Tensor) -> torch.Tensor:
    """E[D] per pixel for y ~ Poisson(μ) (interpolated table; exact to ~1e-4)."""
    lm = torch.log(mu.double().clamp(min=float(_GRID[0]), max=float(_GRID[-1])))
    pos = (lm - _LOG_GRID[0]) / (_LOG_GRID[-1] - _LOG_GRID[0]) * (len(_GRID) - 1)
    i0 = pos.floor().long().clamp(0, len(_GRID) - 2)
    frac = pos - i0
    table = _TABLE.to(mu.device)
    val = table[i0] * (1 - frac) + table[i0 + 1] * frac
    big = mu.double() > _GRID[-1]
    val = torch.where(big, 1 + 1 / (6 * mu.double().clamp(min=1.0)), val)
    return val.to(mu.dtype)


def deviance_ratio(y: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Per-sample D / E[D] (first axis = samples): 1 means 'fits down to the noise'.

    Computed one sample at a time: the table lookup works in float64 and would otherwise
    hold several image-sized float64 temporaries for the whole batch.
    """
    y, mu = torch.broadcast_tensors(y, mu)
    if y.ndim <= 2:
        y, mu = y[None], mu[None]
    out = []
    for yi, mi in zip(y, mu):
        yi = yi.clamp(min=0)
        mi = mi.clamp(min=1e-6)
        d = 2 * (torch.special.xlogy(yi, yi / mi) - (yi - mi)).sum()
        out.append(d.double() / expected_deviance(mi).double().sum())
    return torch.stack(out).to(mu.dtype)

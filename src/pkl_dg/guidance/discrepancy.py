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


_TABLE = _expected_deviance_np(_GRID)
_LOG_LO, _LOG_HI = float(np.log(_GRID[0])), float(np.log(_GRID[-1]))
_PER_LOG = (len(_GRID) - 1) / (_LOG_HI - _LOG_LO)  # table entries per unit of log μ
_TABLES: dict = {}  # (dtype, device) → (values, slopes to the next entry)


def _tables(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    key = (dtype, str(device))
    if key not in _TABLES:
        _TABLES[key] = (torch.as_tensor(_TABLE[:-1], dtype=dtype, device=device),
                        torch.as_tensor(np.diff(_TABLE), dtype=dtype, device=device))
    return _TABLES[key]


def expected_deviance(mu: torch.Tensor, log_mu: torch.Tensor | None = None) -> torch.Tensor:
    """E[D] per pixel for y ~ Poisson(μ), in μ's dtype.

    Linear interpolation in log μ of an exact table (``2 Σ_k pmf(k) [k log(k/μ) − (k − μ)]``
    on 400 points, 1e-3 to 1e3 photons; exact to ~1e-4); above 1e3 photons its large-μ
    expansion 1 + 1/(6μ). ``log_mu``: log μ where the caller has it already (not modified).
    """
    values, slopes = _tables(mu.dtype, mu.device)
    if log_mu is None:
        pos = torch.log(mu.clamp(min=float(_GRID[0]), max=float(_GRID[-1])))
    else:  # log is monotone: the clamp commutes with it
        pos = log_mu.clamp(min=_LOG_LO, max=_LOG_HI)
    pos.sub_(_LOG_LO).mul_(_PER_LOG)
    i0 = pos.to(torch.int64).clamp_(max=len(_GRID) - 2)  # pos ≥ 0: truncation is floor
    val = torch.take(values, i0).addcmul_(torch.take(slopes, i0), pos.sub_(i0))
    big = mu > _GRID[-1]
    if bool(big.any()):
        val = torch.where(big, 1 + 1 / (6 * mu), val)
    return val


def deviance_ratio(y: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Per-sample D / E[D] (first axis = samples): 1 means 'fits down to the noise'.

    Computed one sample at a time, in the data's dtype, each sum accumulated in float64.
    """
    y, mu = torch.broadcast_tensors(y, mu)
    if y.ndim <= 2:
        y, mu = y[None], mu[None]
    out = []
    for yi, mi in zip(y, mu):
        yi = yi.clamp(min=0)
        mi = mi.clamp(min=1e-6)
        d = 2 * (torch.special.xlogy(yi, yi / mi) - (yi - mi)).sum(dtype=torch.float64)
        out.append(d / expected_deviance(mi).sum(dtype=torch.float64))
    return torch.stack(out).to(mu.dtype)


class DevianceRatio:
    """D / E[D] of one fixed measurement against many predictions (every iterate of a run).

    The same ratio as :func:`deviance_ratio` for one sample, in float64 throughout, with
    D = 2 [Σ (y·log y − y) − Σ y·log μ + Σ μ]: the data's own sum is taken once, and
    each call costs one logarithm, shared by D and E[D], a dot product and two sums
    (0.72 vs 0.79 ms at 63 k pixels, 2 threads; with
    :meth:`~pkl_dg.richardson_lucy.RLIterate.mean_at` the automatic stop's check costs
    0.80 instead of 1.67 ms per iteration on the BioSR dev image).

    Parameters
    ----------
    y
        The measurement, photons (any shape; negative values count as 0).

    Raises
    ------
    ValueError
        When called with a prediction of another size than ``y``.
    """

    def __init__(self, y: torch.Tensor) -> None:
        self.y = y.reshape(-1).to(torch.float64).clamp(min=0)
        self.own = float((torch.special.xlogy(self.y, self.y) - self.y).sum())

    def __call__(self, mu: torch.Tensor) -> float:
        """The ratio for the prediction ``mu`` (photons, as many values as ``y``)."""
        if mu.numel() != self.y.numel():
            raise ValueError(f"{mu.numel()} predicted values for {self.y.numel()} measured")
        m = torch.clamp(mu.reshape(-1).to(torch.float64), min=1e-6)
        log_m = torch.log(m)
        d = 2.0 * (self.own - torch.dot(self.y, log_m) + m.sum())
        return float(d / expected_deviance(m, log_m).sum())  # one host sync per call

"""Data-fidelity terms f(x) (negative log-likelihoods) and their gradients ∇f.

Every ``grad`` returns ∇f, the gradient of the quantity being *minimised*; a descent step
is x ← x − λ·∇f; ``grad`` accepts the forward prediction ``mu = fm.mean(x)`` when the
caller already has it (saves one convolution). ``nll`` returns one value per sample (sum
over all but the first axis of a batch ``(N, ...)``; a lone image gives a 0-d tensor).
Intensities are photon counts.

Pixels outside the forward model's mask (``fm.mask``, e.g. saturated ones) are left out:
their terms are weighted by it in ``nll`` and their residuals in ``grad``.

Every ``nll`` is finite for any non-negative data and any predicted mean μ (μ is clamped at
0: it can round a hair below zero over exact-zero background, whose log would be NaN).
"""

from __future__ import annotations

import torch

from pkl_dg.physics.forward import ForwardModel

EPS = 1e-6  # photons: keeps log and division finite where μ = 0


def _sum_per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1).sum(dim=1) if v.ndim > 2 else v.sum()


class Likelihood:
    """Base class: a negative log-likelihood of the data ``y`` given the object ``x``."""

    name = "base"
    #: True when ∇f is dimensionless (≈ (μ−y)/μ), so the Poisson-preconditioned step
    #: x ← x − λ·x/Aᵀ1·∇f needs no further scaling (PKL, Anscombe).
    dimensionless = True

    def nll(self, x: torch.Tensor, y: torch.Tensor, fm: ForwardModel) -> torch.Tensor:
        raise NotImplementedError

    def grad(self, x: torch.Tensor, y: torch.Tensor, fm: ForwardModel,
             mu: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class L2(Likelihood):
    """f = ½‖A x + B − y‖², ∇f = Aᵀ(A x + B − y)."""

    name = "l2"
    dimensionless = False

    def nll(self, x, y, fm):
        return _sum_per_sample(fm.weight(0.5 * (fm.mean(x) - y) ** 2))

    def grad(self, x, y, fm, mu=None):
        return fm.A_adjoint(fm.weight((fm.mean(x) if mu is None else mu) - y))


def _anscombe(z: torch.Tensor) -> torch.Tensor:
    return 2.0 * torch.sqrt(z + 0.375)


class AnscombeL2(Likelihood):
    """f = ½‖φ(A x + B + s²) − φ(y + s²)‖², φ(z) = 2√(z + 3/8) (variance-stabilised Poisson).

    ∇f = Aᵀ[(φ(μ + s²) − φ(y + s²)) / √(μ + s² + 3/8)]. With read noise of variance s² this
    is the generalised Anscombe transform (Poisson–Gaussian, unit gain), the same shift as
    PKL's; data still below 0 after the shift are clipped to 0 inside φ, where it is defined.
    """

    name = "anscombe"

    def _phi_pair(self, x, y, fm, mu=None):
        s2 = fm.read_noise_var
        mu = (fm.mean(x) if mu is None else mu).clamp(min=0) + s2
        return mu, _anscombe(mu), _anscombe((y + s2).clamp(min=0))

    def nll(self, x, y, fm):
        _, pm, py = self._phi_pair(x, y, fm)
        return _sum_per_sample(fm.weight(0.5 * (pm - py) ** 2))

    def grad(self, x, y, fm, mu=None):
        mu, pm, py = self._phi_pair(x, y, fm, mu)
        return fm.A_adjoint(fm.weight((pm - py) / torch.sqrt(mu + 0.375)))


class PoissonKL(Likelihood):
    """PKL: f = Σ μ' − y'·log(μ' + ε), μ' = A x + B + s², y' = max(y + s², 0).

    ∇f = Aᵀ(1 − y'/(μ' + ε)). With read noise of variance s² the shifted-Poisson model
    y + s² ~ Poisson(μ + s²) is used (Snyder et al.): shifting the data too keeps the
    estimate unbiased; with s = 0 this is exactly the Poisson negative log-likelihood
    (up to a constant), whose minimiser is what Richardson–Lucy iterates towards.
    """

    name = "pkl"

    def _shifted(self, x, y, fm, mu=None):
        s2 = fm.read_noise_var
        mu = (fm.mean(x) if mu is None else mu).clamp(min=0)
        return mu + s2, (y + s2).clamp(min=0)

    def nll(self, x, y, fm):
        mu, ys = self._shifted(x, y, fm)
        return _sum_per_sample(fm.weight(mu - torch.special.xlogy(ys, mu + EPS)))

    def grad(self, x, y, fm, mu=None):
        mu, ys = self._shifted(x, y, fm, mu)
        return fm.A_adjoint(fm.weight(1.0 - ys / (mu + EPS)))


LIKELIHOODS: dict[str, Likelihood] = {c.name: c() for c in (L2, AnscombeL2, PoissonKL)}


def get_likelihood(name: str) -> Likelihood:
    try:
        return LIKELIHOODS[name]
    except KeyError:
        raise ValueError(f"unknown guidance {name!r}: choose one of "
                         f"{', '.join(LIKELIHOODS)}") from None

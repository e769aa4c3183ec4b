"""Guidance step rules and the ramp schedule that sets their strength per timestep.

Two rules, both projected onto x ≥ 0 (photon intensities cannot be negative):

``poisson`` (default) — the Poisson-preconditioned step
    x ← max(x − w·λ·(x / Aᵀ1)·∇f / c, 0),
    with c = 1 for PKL and Anscombe (their gradients are dimensionless, ≈ (μ−y)/μ) and
    c = max(μ) per sample for L2: its gradient Aᵀ(μ − y) is μ times the relative residual, so
    dividing by the largest μ keeps every pixel's step at most an RL-sized one (c = mean(μ)
    overshot on bright structures and left L2 results below the input at 100–1000 photons).
    For PKL at λ = w = 1 this
    is exactly one Richardson–Lucy iteration x·Aᵀ(y/μ)/Aᵀ1; ``sub_iterations`` of them run
    per diffusion step, so λ is in units of "RL iterations".

``adaptive`` — the paper's normalised step
    x ← max(x − w·λ·‖x‖/(‖∇f‖ + ε)·∇f, 0),
    i.e. each sub-iteration moves x by the fraction w·λ of its own norm along −∇f/‖∇f‖
    (norms per sample over C, H, W). The upstream code used λ/‖∇f‖ without the ‖x‖
    factor, which moved whole images by ≈0.1 counts: inert.

w is the ramp: 0 at t = T, rising (linearly or as a half cosine) to 1 at t = T_thr and
staying 1 below it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pkl_dg.guidance.discrepancy import deviance_ratio
from pkl_dg.guidance.likelihoods import Likelihood
from pkl_dg.guidance.proximal import poisson_proximal
from pkl_dg.physics.forward import ForwardModel


STEP_RULES = ("proximal", "poisson", "adaptive")


def ramp_weight(t: int, num_timesteps: int, t_threshold: int, kind: str = "linear") -> float:
    """Guidance weight at timestep ``t``: min((T − t)/(T − T_thr), 1), or its cosine form."""
    if kind not in ("linear", "cosine"):
        raise ValueError(f"ramp must be 'linear' or 'cosine', got {kind!r}")
    if not 0 <= t_threshold < num_timesteps:
        raise ValueError(f"T_threshold must be in [0, {num_timesteps}), got {t_threshold}")
    r = min(max((num_timesteps - t) / (num_timesteps - t_threshold), 0.0), 1.0)
    return r if kind == "linear" else 0.5 * (1.0 - math.cos(math.pi * r))


#: automatic sub-iterations k = K_AUTO_BASE · (peak / K_AUTO_PEAK)^K_AUTO_EXPONENT, clipped
#: to [K_AUTO_MIN, K_AUTO_MAX]; ``peak`` = the 99.9th percentile of a 20-iteration RL
#: estimate (photons; the intensity scale over 1.2). Without a stopping rule the best fixed k
#: on procedural phantoms (Gaussian PSF σ = 2 px, peak 10–1000 photons) was 2, 4, 10, 16, 40,
#: i.e. base 2. With the discrepancy stop (the default) k is only a cap, and twice that
#: (base 4) scored better on a tuning seed: see src/pkl_dg/weights/README.md.
K_AUTO_BASE, K_AUTO_PEAK, K_AUTO_EXPONENT, K_AUTO_MIN, K_AUTO_MAX = 4.0, 7.0, 0.65, 1, 120


def auto_sub_iterations(peak_photons: float) -> int:
    """Sub-iterations per diffusion step for an image whose bright structures hold
    ``peak_photons`` (see the constants above)."""
    if not peak_photons > 0:
        return K_AUTO_MIN
    k = K_AUTO_BASE * (peak_photons / K_AUTO_PEAK) ** K_AUTO_EXPONENT
    return int(min(max(round(k), K_AUTO_MIN), K_AUTO_MAX))


#: the proximal rule's automatic sub-iterations are capped here
PROXIMAL_K_MAX = 30
#: from this many plain sub-iterations on, the automatic count runs accelerated and halved
PROXIMAL_ACCEL_FROM = 4


def proximal_sub_iterations(rl_iterations: int, steps: int) -> tuple[int, bool]:
    """Sub-iterations per diffusion step of the proximal rule, and whether they are
    accelerated.

    Richardson–Lucy's automatic count of the image
    (:class:`~pkl_dg.guidance.stopping.AutoStop`) is shared out over the ``steps``, so the
    sampler's data iterations add up to it: k = ⌈count / steps⌉ in [1, PROXIMAL_K_MAX].
    From :data:`PROXIMAL_ACCEL_FROM` on, ⌈k/2⌉ (at least 3) Biggs–Andrews-accelerated
    iterations replace them (:func:`~pkl_dg.guidance.proximal.poisson_proximal`). Measured
    on the BioSR F-actin dev pair (PSNR / SSIM by the CARE protocol): σ 2 px, 108 RL
    iterations: 11 plain 22.47 / 0.688, 6 accelerated 22.49 / 0.702 (6 plain 22.26 /
    0.640); fitted σ 1.87, 129 iterations: 13 plain 22.85 / 0.710, 7 accelerated 22.89 /
    0.730. The dev inputs with fewer (W2S, C. elegans: 1; flowdec bars: 3) are unchanged.
    The synthetic quality cases at 1000 photons (``pkl-dg bench quality --reduced``) moved
    by −0.20 to +0.12 dB, −0.04 on average; α_max 0.7 scored lower on all of these.
    """
    k = int(min(max(math.ceil(rl_iterations / steps), 1), PROXIMAL_K_MAX))
    if k < PROXIMAL_ACCEL_FROM:
        return k, False
    return max(math.ceil(k / 2), 3), True


#: Discrepancy target per photon level: the fit may go below the noise level by the degrees
#: of freedom it resolves, which grow with the signal. Targets: 1.0 up to 30 photons peak,
#: 0.95 from 100 on, log-linear between (chosen on phantoms of a tuning seed).
DISC_LOW_PEAK, DISC_HIGH_PEAK, DISC_LOW, DISC_HIGH = 30.0, 100.0, 1.0, 0.95


def auto_discrepancy(peak_photons: float) -> float:
    """Deviance target (multiple of its expectation) for an image peaking at ``peak_photons``."""
    if not peak_photons > DISC_LOW_PEAK:
        return DISC_LOW
    f = min(1.0, math.log(peak_photons / DISC_LOW_PEAK) / math.log(DISC_HIGH_PEAK / DISC_LOW_PEAK))
    return DISC_LOW + f * (DISC_HIGH - DISC_LOW)


def _norm(v: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm over all but the first axis, shaped to broadcast."""
    n = torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1)
    return n.reshape(-1, *([1] * (v.ndim - 1)))


@dataclass(frozen=True)
class GuidanceStep:
    """One guidance update applied to x̂0 (intensity units, shape (N, 1, H, W))."""

    likelihood: Likelihood
    rule: str = "poisson"
    lam: float = 1.0
    sub_iterations: int = 1
    #: > 0: stop a sample's sub-iterations once its Poisson deviance is at most this
    #: multiple of its expected value (the discrepancy principle; ``sub_iterations`` is
    #: then the maximum). 0 runs all sub-iterations.
    discrepancy: float = 0.0
    #: the proximal rule's iterations Biggs–Andrews-accelerated (see its module)
    accelerate: bool = False
    eps: float = 1e-12

    def __post_init__(self) -> None:
        if self.rule not in STEP_RULES:
            raise ValueError(f"step rule must be one of {', '.join(STEP_RULES)}, got "
                             f"{self.rule!r}")
        if self.rule == "proximal" and self.likelihood.name != "pkl":
            raise ValueError("the proximal step is the Poisson (PKL) one: use the 'poisson' "
                             f"step rule with {self.likelihood.name} guidance")
        if self.lam < 0 or self.sub_iterations < 1 or self.discrepancy < 0:
            raise ValueError("λ and the discrepancy target must be ≥ 0, sub-iterations ≥ 1")

    def __call__(self, x: torch.Tensor, y: torch.Tensor, fm: ForwardModel,
                 weight: float = 1.0, prior_std: float | None = None,
                 x_init: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the update; ``prior_std`` (photons) is x̂0's uncertainty at this step
        (needed by the proximal rule: τ = weight · λ · prior_std)."""
        step = weight * self.lam
        if step == 0:
            return x
        if self.rule == "proximal":
            if prior_std is None:
                raise ValueError("the proximal step needs the prior's uncertainty (prior_std)")
            return poisson_proximal(x, y, fm, step * prior_std, self.sub_iterations,
                                    x_init=x_init, accelerate=self.accelerate)
        active = None  # per-sample mask while the discrepancy principle is on
        for _ in range(self.sub_iterations):
            mu = fm.mean(x)  # one forward prediction per sub-iteration, shared below
            if self.discrepancy > 0:
                s2 = fm.read_noise_var
                ratio = deviance_ratio(y + s2, mu + s2)
                active = (ratio > self.discrepancy).reshape(-1, *([1] * (x.ndim - 1)))
                if not bool(active.any()):
                    break
            g = self.likelihood.grad(x, y, fm, mu)
            if self.rule == "poisson":
                pre = x / fm.adjoint_ones(x).clamp(min=self.eps)
                if not self.likelihood.dimensionless:
                    mu_max = mu.reshape(x.shape[0], -1).amax(dim=1)
                    pre = pre / mu_max.clamp(min=self.eps).reshape(-1, *([1] * (x.ndim - 1)))
                new = (x - step * pre * g).clamp(min=0)
            else:
                new = (x - step * _norm(x) / (_norm(g) + self.eps) * g).clamp(min=0)
            x = new if active is None else torch.where(active, new, x)
        return x

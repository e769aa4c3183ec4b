"""A Poisson proximal data step: the data pull weighed against the prior's own uncertainty.

At every diffusion step the prior gives x̂0 with an uncertainty that shrinks with the
diffusion noise level. Instead of running Richardson–Lucy from x̂0 (which, run to
convergence, ends at the maximum-likelihood fit whatever x̂0 was: for a one-pixel PSF
that is the noisy input itself), the data step solves

    x* = argmin_x  Σ [μ − y'·log μ] + ‖x − x̂0‖² / (2 τ²),   μ = A x + B + s²,  y' = y + s²,

the proximal operator of the Poisson negative log-likelihood (shifted-Poisson read-noise
model as in :class:`~pkl_dg.guidance.likelihoods.PoissonKL`), as in DiffPIR (Zhu et al.,
"Denoising Diffusion Models for Plug-and-Play Image Restoration", CVPR workshops 2023),
with the Poisson likelihood in place of their Gaussian one. τ (photons) is the prior's
uncertainty: ``τ = ζ · (s/2) · σ̄_t``, with σ̄_t = √((1 − ᾱ_t)/ᾱ_t) the noise level of x̂0
in the model domain, s/2 photons per model unit (:class:`~pkl_dg.diffusion.mapping.
IntensityMapping`) and ζ the strength of the data term relative to the prior's noise level
(the square root of DiffPIR's 1/λ). Early (large σ̄_t) the data decide; late, the prior.

The minimisation is majorise–minimise: the EM surrogate of the Poisson term (De Pierro,
IEEE TMI 14, 1995) separates per pixel, so with the quadratic prior term each iteration
has a closed form, the positive root of

    x² + (n τ² − x̂0)·x − n τ² · x_EM = 0,   x_EM = x · Aᵀ(y'/μ) / n,  n = Aᵀ1.

Every iteration lowers the objective. With a one-pixel PSF and no background the surrogate
is exact and one iteration gives the exact per-pixel proximal point; τ → ∞ gives plain
Richardson–Lucy iterations, τ → 0 gives x̂0.

``accelerate=True`` extrapolates the iterations as Biggs & Andrews do for RL (Applied Optics
36, 1997; :mod:`pkl_dg.richardson_lucy`): each iteration starts from
Y = max(x_k + α(x_k − x_{k−1}), floor), α = ⟨g_k, g_{k−1}⟩/⟨g_{k−1}, g_{k−1}⟩ per sample,
clipped to [0, α_max], g_k the change the previous iteration made; α = 0 for the first two.
The extrapolated iterate need not lower the objective, so this is a faster route to the
same kind of fit, not a guarantee: :data:`ACCEL_ALPHA_MAX` and the halved iteration count
of :func:`~pkl_dg.guidance.steps.proximal_sub_iterations` were measured on the dev data.
"""

from __future__ import annotations

import torch

from pkl_dg.guidance.likelihoods import EPS
from pkl_dg.physics.forward import ForwardModel
from pkl_dg.threads import in_two, two_at_once

#: upper clip of the extrapolation factor α with ``accelerate`` (deconvlucy clips at 1)
ACCEL_ALPHA_MAX = 1.0


def poisson_proximal(x_prior: torch.Tensor, y: torch.Tensor, fm: ForwardModel,
                     tau: torch.Tensor | float, iterations: int = 1,
                     floor: float = 1e-6, x_init: torch.Tensor | None = None,
                     accelerate: bool = False) -> torch.Tensor:
    """Approximate Poisson proximal point of ``x_prior`` (photons).

    Parameters
    ----------
    x_prior
        x̂0, (N, 1, H, W) or (N, P, H, W), photons, ≥ 0.
    y
        The measurement, photons, broadcastable to ``x_prior``.
    fm
        Forward model (PSF, background B, read-noise variance s²).
    tau
        Prior uncertainty in photons: a number or a per-sample tensor broadcastable to
        ``x_prior``. 0 returns ``x_prior``.
    iterations
        Majorise–minimise iterations (each: one forward and one adjoint convolution).
    floor
        Smallest value (photons) an iterate starts from, so that EM can move a pixel off 0.
    x_init
        Where the iterations start (default ``x_prior``): the previous diffusion step's
        solution is a warm start, since the proximal point moves little between steps.
    accelerate
        Biggs–Andrews extrapolation of the iterations (see the module docstring).

    On a CPU with two or more torch threads, the samples go in two halves, one on a helper
    thread (:func:`pkl_dg.threads.in_two`; every sample's iterations are its own, so the
    result is the same up to float rounding). Torch's own threads share these small FFTs
    and element-wise passes badly: 4 samples, 6 accelerated iterations, 2 threads, ms,
    together / in halves / on one thread: 256² 46 / 18 / 25, 502² 93 / 53 / 99, 1024²
    337–427 / 285 / 545 (``/work/exp26/proxsplit.py``, session 26).

    Returns
    -------
    Tensor like ``x_prior``, ≥ 0.

    Raises
    ------
    ValueError
        If ``iterations`` < 1 or τ is negative.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be ≥ 1, got {iterations}")
    tau_t = torch.as_tensor(tau, dtype=x_prior.dtype, device=x_prior.device)
    if bool((tau_t < 0).any()):
        raise ValueError("τ must be ≥ 0")
    if not bool((tau_t > 0).any()):
        return x_prior
    n = len(x_prior)
    if x_prior.device.type == "cpu" and n >= 2 and two_at_once():
        def rows(t: torch.Tensor | None, part: slice) -> torch.Tensor | None:
            per_sample = t is not None and t.ndim == x_prior.ndim and t.shape[0] == n
            return t[part] if per_sample else t

        parts = in_two(lambda part: _proximal(
            x_prior[part], rows(y, part), fm, rows(tau_t, part), iterations, floor,
            rows(x_init, part), accelerate), [slice(0, (n + 1) // 2), slice((n + 1) // 2, n)])
        return torch.cat(parts)
    return _proximal(x_prior, y, fm, tau_t, iterations, floor, x_init, accelerate)


def _proximal(x_prior: torch.Tensor, y: torch.Tensor, fm: ForwardModel, tau_t: torch.Tensor,
              iterations: int, floor: float, x_init: torch.Tensor | None,
              accelerate: bool) -> torch.Tensor:
    """:func:`poisson_proximal` of these samples on the calling thread."""
    s2 = fm.read_noise_var
    ys = (y + s2).clamp(min=0).expand_as(x_prior)
    n = fm.adjoint_ones(x_prior).clamp(min=EPS)
    nt2 = torch.mul(n, tau_t).mul_(tau_t)
    c = nt2 - x_prior
    positive = c > 0
    # max(max(A x + B, 0) + s², floor) = max(A x + (B + s²), max(s², floor)): the constant
    # rides on the FFT's zero-frequency bin, the clamp is one in-place pass
    ws = fm.conv.workspace(tuple(x_prior.shape), x_prior.dtype, x_prior.device)
    b = fm.background
    bias = b.to(x_prior.device, x_prior.dtype) + s2 if torch.is_tensor(b) else float(b) + s2
    low = max(s2, floor)
    x = (x_prior if x_init is None else x_init).clamp(min=floor)  # a new tensor: updated in place
    x_em, root, den = (torch.empty_like(x) for _ in range(3))
    extrapolate = _Extrapolation(x) if accelerate else None
    # c², 2·n·τ² and 4·n·τ² are formed in each iteration's buffers, not kept: at 4096² a
    # fresh image costs more than a pass over one (/work/exp24, session 24)
    for k in range(iterations):
        base = x if extrapolate is None else extrapolate.start(x, floor)
        if torch.is_tensor(bias):
            mu = ws.A(base).add_(bias).clamp_(min=low)
        else:
            mu = ws.A(base, bias).clamp_(min=low)
        torch.div(ys, mu, out=ws.adjoint_input())
        torch.mul(base, ws.adjoint(), out=x_em)
        x_em.div_(n).clamp_(min=0)
        torch.mul(c, c, out=root).addcmul_(nt2, x_em, value=4.0).sqrt_()
        # the positive root, in the form without cancellation for each sign of c
        torch.add(root, c, out=den).clamp_(min=EPS)
        x_em.mul_(nt2).mul_(2.0).div_(den)
        root.sub_(c).mul_(0.5)
        if extrapolate is not None:
            x = extrapolate.record(x)  # x_k kept; a free buffer for x_{k+1}
        torch.where(positive, x_em, root, out=x).clamp_(min=floor)
        if extrapolate is not None and k + 1 < iterations:  # the last change is not used
            extrapolate.change(x, base)
    return x


class _Extrapolation:
    """Biggs–Andrews bookkeeping of :func:`poisson_proximal` (per sample along axis 0)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.n = x.shape[0]
        self.prev: torch.Tensor | None = None  # x_{k−1}
        self.g: torch.Tensor | None = None  # x_k − Y_{k−1}
        self.g_prev: torch.Tensor | None = None
        self.spare: torch.Tensor | None = None  # a buffer for the next iterate
        self.y: torch.Tensor | None = None  # Y's buffer

    def start(self, x: torch.Tensor, floor: float) -> torch.Tensor:
        """Y = max(x + α(x − x_prev), floor), or x itself while α is not defined yet.

        On a CPU, α's inner products are BLAS dots per sample and Y one scalar lerp per
        sample into a kept buffer: 4096², one sample, 13 ms instead of 56 for the batched
        products and the broadcast lerp, whose temporaries are fresh 64 MB allocations
        (/work/exp24/start.py, session 24; the same within float rounding, ≤ 1e-5
        relative). Elsewhere α stays a tensor: no host sync.
        """
        if self.g_prev is None:
            return x
        if self.y is None:
            self.y = torch.empty_like(x)
        g, gp = self.g.reshape(self.n, -1), self.g_prev.reshape(self.n, -1)
        if x.device.type == "cpu":
            for i in range(self.n):
                a = float(torch.dot(g[i], gp[i])) / (float(torch.dot(gp[i], gp[i])) + 1e-30)
                torch.lerp(self.prev[i], x[i], 1.0 + min(max(a, 0.0), ACCEL_ALPHA_MAX),
                           out=self.y[i])
        else:
            alpha = (g * gp).sum(1) / ((gp * gp).sum(1) + 1e-30)
            alpha = alpha.clamp_(0.0, ACCEL_ALPHA_MAX).reshape(-1, *([1] * (x.ndim - 1)))
            torch.lerp(self.prev, x, 1.0 + alpha, out=self.y)
        return self.y.clamp_(min=floor)

    def record(self, x: torch.Tensor) -> torch.Tensor:
        """Keep x as x_{k−1}; return the buffer the next iterate is written into."""
        out = self.spare if self.spare is not None else torch.empty_like(x)
        self.spare, self.prev = self.prev, x
        return out

    def change(self, x: torch.Tensor, base: torch.Tensor) -> None:
        """g ← x_new − Y (the previous g becomes g_prev)."""
        new = self.g_prev if self.g_prev is not None else torch.empty_like(x)
        self.g_prev = self.g
        self.g = torch.sub(x, base, out=new)

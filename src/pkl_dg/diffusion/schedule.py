"""Cosine noise schedule (Nichol & Dhariwal 2021) shared by training and sampling, and the
DDIM scheduler (Song et al. 2021) that walks it back at sampling time.

``alphas_cumprod[t]`` is ᾱ_t for integer t in ``[0, T)``; x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε.
:class:`DDIMScheduler` holds the sampling timesteps and the three formulas of a DDIM step:
x̂0 from ε (:meth:`~DDIMScheduler.predict_x0`), ε from x̂0 and the update to the next
timestep (:meth:`~DDIMScheduler.step`).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from einops import rearrange

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
    """Evenly spaced, strictly decreasing integer timesteps from T−1 down to 0.

    The "linear" subsequence τ of Song et al. 2021 §4.2, rounded, ending at t = 0.

    Parameters
    ----------
    steps : int
        Number of timesteps, 1 ≤ steps ≤ ``num_timesteps`` (1 gives ``[T − 1]``).
    num_timesteps : int
        T, the training schedule's length.

    Returns
    -------
    list of int
        ``steps`` timesteps, ``[T − 1, …, 0]``.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be between 1 and {num_timesteps}, got {steps}")
    if steps == 1:
        return [num_timesteps - 1]
    ts = torch.linspace(num_timesteps - 1, 0, steps).round().long().tolist()
    return ts


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Noise a clean batch ``x0`` (N, C, H, W) to timesteps ``t`` (N,) with ``noise``.

    x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (Ho et al. 2020, eq. 4); ``noise`` is ε, shape of ``x0``.
    """
    a = alphas_cumprod.to(device=x0.device)[t].to(x0.dtype)
    a = rearrange(a, "batch -> batch 1 1 1")
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


class DDIMScheduler:
    """The DDIM update over a decreasing subsequence of the training timesteps.

    In the spirit of diffusers' ``DDIMScheduler`` (``set_timesteps`` is the constructor
    here, ``step`` takes the x̂0 that guidance may have corrected). Formulas: Song, Meng &
    Ermon 2021, *Denoising Diffusion Implicit Models*, eq. 12 (the update) and eq. 16 (σ_t).

    Parameters
    ----------
    steps : int
        Sampling steps, between 1 and T.
    eta : float
        η ∈ [0, 1]: 0 is deterministic DDIM, 1 adds the DDPM posterior's noise (eq. 16).
    alphas_cumprod : torch.Tensor, optional
        ᾱ_t of the training schedule, shape (T,); default :func:`cosine_alphas_cumprod`.

    Attributes
    ----------
    timesteps : tuple of int
        The sampling timesteps, strictly decreasing from T − 1 to 0 (:func:`ddim_timesteps`).
    num_train_timesteps : int
        T.
    """

    def __init__(self, steps: int = 25, eta: float = 0.0,
                 alphas_cumprod: torch.Tensor | None = None) -> None:
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"η must be in [0, 1], got {eta}")
        ac = alphas_cumprod if alphas_cumprod is not None else cosine_alphas_cumprod()
        self.num_train_timesteps = int(ac.shape[0])
        self.timesteps = tuple(ddim_timesteps(steps, self.num_train_timesteps))
        self.eta = float(eta)
        self._abar = ac.double().tolist()  # python floats: no tensor indexing per step
        #: each sampling timestep → the one sampled after it, diffusers' "previous timestep"
        #: (None after the last)
        self._prev: dict[int, int | None] = dict(zip(self.timesteps,
                                                     self.timesteps[1:] + (None,)))

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t."""
        return self._abar[t]

    def alpha_bar_prev(self, t: int) -> float:
        """ᾱ of the timestep after ``t`` in :attr:`timesteps`; 1 (clean) after the last."""
        prev = self._prev_timestep(t)
        return 1.0 if prev is None else self._abar[prev]

    def _prev_timestep(self, t: int) -> int | None:
        try:
            return self._prev[t]
        except KeyError:
            raise ValueError(f"timestep {t} is not one of this scheduler's") from None

    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        """x̂0 = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t, the "predicted x0" of eq. 12 (any shape).

        The inverse of the noising x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (:func:`q_sample`).
        """
        a_t = self._abar[t]
        return (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)

    def predict_eps(self, x_t: torch.Tensor, x0: torch.Tensor, t: int) -> torch.Tensor:
        """ε = (x_t − √ᾱ_t·x̂0) / √(1−ᾱ_t): the noise that makes ``x0`` the prediction."""
        a_t = self._abar[t]
        return (x_t - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)

    def timestep_for(self, sigma_bar: float) -> int:
        """The training timestep whose x̂0 noise level σ̄_t is closest to ``sigma_bar``
        (model units; 0 for anything below σ̄_0)."""
        return min(range(len(self._abar)),
                   key=lambda t: abs(self.x0_noise_level(t) - sigma_bar))

    def x0_noise_level(self, t: int) -> float:
        """σ̄_t = √((1−ᾱ_t)/ᾱ_t): x̂0's error per unit error of ε (from :meth:`predict_x0`)."""
        a_t = self._abar[t]
        return math.sqrt((1 - a_t) / a_t)

    def sigma(self, t: int) -> float:
        """σ_t(η) = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev), eq. 16 (0 after the last step)."""
        a_t, a_prev = self._abar[t], self.alpha_bar_prev(t)
        return self.eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)

    def step(self, x_t: torch.Tensor, x0: torch.Tensor, t: int,
             generator: torch.Generator | None = None, *,
             noise: Callable[[tuple[int, ...]], torch.Tensor] | None = None) -> torch.Tensor:
        """x_prev = √ᾱ_prev·x̂0 + √(1−ᾱ_prev−σ_t²)·ε + σ_t·z, eq. 12 (z ~ N(0, I)).

        Parameters
        ----------
        x_t : torch.Tensor
            The current sample at timestep ``t``, any shape.
        x0 : torch.Tensor
            Its x̂0 (the network's, or corrected by guidance), the shape of ``x_t``; ε is
            re-derived from it (:meth:`predict_eps`), so the step stays consistent with a
            corrected x̂0.
        t : int
            A timestep of :attr:`timesteps`.
        generator : torch.Generator, optional
            A CPU generator for z (drawn only when σ_t > 0, on the CPU, then moved to
            ``x_t``'s device, so a seed gives the same sample on any device); the global
            generator when None.
        noise : callable, optional
            ``draw(shape)`` giving z instead of ``generator`` (e.g. each sample's own stream,
            or a chunk's window of the whole plane's, :func:`pkl_dg.diffusion.noise.window_noise`).

        Returns
        -------
        torch.Tensor
            x at the next timestep; after the last timestep, ``x0`` itself (ᾱ_prev = 1).
        """
        if self._prev_timestep(t) is None:
            return x0
        a_prev = self.alpha_bar_prev(t)
        eps = self.predict_eps(x_t, x0, t)
        sigma = self.sigma(t)
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)) * eps
        if sigma > 0:
            z = noise(tuple(x.shape)) if noise is not None else torch.randn(
                x.shape, generator=generator)
            x = x + sigma * z.to(x.device)
        return x

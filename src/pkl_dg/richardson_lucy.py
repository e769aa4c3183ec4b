"""Richardson–Lucy deconvolution with the same forward model as the guided sampler.

x ← x · Aᵀ(y / (A x + B)) / (Aᵀ1 − λ_TV · div(∇x / |∇x|))

(Richardson 1972, Lucy 1974; Dey et al. 2006 for the TV term). Without TV every
iteration is an EM step and never decreases the Poisson likelihood. Data are expected in
photon units; read noise enters through the shifted-Poisson model (y + s², μ + s²) as in
:class:`~pkl_dg.guidance.PoissonKL`; pixels outside the forward model's mask (saturated
ones) are left out of both Aᵀ terms.

Cost per iteration: exactly one A and one Aᵀ, i.e. four real FFTs on the padded grid with
a cached OTF (:class:`~pkl_dg.physics.workspace.ConvWorkspace`), plus a few element-wise
passes; no buffer is allocated per iteration (the estimates reuse buffers nothing refers to
any more, :class:`~pkl_dg.iterate_pool.IteratePool`). The forward
prediction μ = A x + B that iteration k + 1 needs is that of iterate k, so the misfit of
iterate k (:meth:`RLIterate.nll`) costs no convolution: only a logarithm pass, and only
when asked for.

Acceleration (``accelerate=True``) is the vector extrapolation of Biggs & Andrews,
"Acceleration of iterative image restoration algorithms", Applied Optics 36(8):1766–1775
(1997), in the form MATLAB's ``deconvlucy`` and cudaDecon use: predict
Yₖ = max(xₖ₋₁ + αₖ(xₖ₋₁ − xₖ₋₂), 0) with αₖ = ⟨gₖ₋₁, gₖ₋₂⟩ / ⟨gₖ₋₂, gₖ₋₂⟩ clipped to
[0, α_max], where gₖ = xₖ − Yₖ is the change the RL step made, then xₖ = RL step from
Yₖ (clipped at 0). α = 0 for the first two iterations. deconvlucy clips α at 1; we clip
at :data:`ALPHA_MAX` = 0.7. Measured (best PSNR over iterations, accelerated vs plain): on
the BioSR widefield→SIM pair (Gaussian σ = 2 px) plain RL peaks at 22.57 dB at iteration
124, accelerated reaches it within 0.02 dB at iteration 37 (α_max = 1: never, its best is
0.25 dB lower); on smooth spots at high signal it reaches plain RL's best in a quarter to a
third of the iterations; on the procedural phantoms (sharp points and lines, 1000–3000
photons) its best stays 0.05–0.4 dB below plain RL's (extrapolation amplifies the noise
along with the detail), in 0.3–0.4× the iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from pkl_dg.guidance.likelihoods import EPS
from pkl_dg.iterate_pool import IteratePool
from pkl_dg.physics.bands import use_bands
from pkl_dg.physics.forward import ForwardModel
from pkl_dg.threads import ONE_THREAD_BELOW_PX, one_thread

#: Upper clip of the Biggs–Andrews factor α (deconvlucy clips at 1; see the module docstring)
ALPHA_MAX = 0.7

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
    """A flat image with the data's mean signal above background (the usual RL start).

    Where the data's mean lies below the background (an offset given a little too high,
    while structures stand far above it) the start is half the mean of the positive part
    instead (the flux-conserving level, ≤ 0, was clamped to 0.001 photons): from a start near 0 RL's
    multiplicative update needs many iterations to grow, and the automatic stop saw a fit
    that barely moved as stalled (measured: a 90 ADU dark level with the offset given as
    101.8, 58 % of the pixels negative: stopped at 3 iterations with an empty result).
    """
    above = y - fm.background
    level, positive = float(above.mean()), float(above.clamp(min=0).mean())
    if level <= 0:  # the negative values cancel all of the signal
        level = 0.5 * positive
    return torch.full_like(y, max(level, 1e-3))


@dataclass
class RLIterate:
    """One Richardson–Lucy iterate, as yielded by :func:`rl_iterates` and given to ``stop``.

    Attributes
    ----------
    k
        Iterations done (1 for the first iterate).
    x
        The estimate after ``k`` iterations, photons, shape of the data. A new tensor each
        iteration: it may be kept (its memory is reused only once nothing refers to it,
        views and numpy arrays included); do not modify it in place while iterating.
    alpha
        The Biggs–Andrews extrapolation factor used to reach it (0 for plain RL).
    next_from_here
        The run's next iteration starts from this iterate (plain RL; accelerated RL within
        its ``plain_first``), so it computes this iterate's prediction anyway.
    """

    k: int
    x: torch.Tensor
    alpha: float
    _loop: "_RLLoop" = field(repr=False)
    next_from_here: bool = True

    def mean(self) -> torch.Tensor:
        """μ' = max(A x + B, 0) + s², the shifted Poisson mean of this iterate (a new tensor).

        Free for plain RL (the next iteration needs it anyway); two FFTs once per iterate
        when accelerated.
        """
        return self._loop.fit(self.x) - EPS

    def mean_at(self, index: torch.Tensor, workspace=None) -> torch.Tensor:
        """μ' of this iterate at the flat pixel indices ``index`` (1-D int64, into the
        data's shape): :meth:`mean` there, without a copy of the whole image. With a
        ``workspace`` of its own (:meth:`workspace`) the prediction is computed there, not
        in the run's buffers: on another thread while the run goes on."""
        if workspace is None:
            return torch.take(self._loop.fit(self.x), index).sub_(EPS)
        return torch.take(self._loop.predict(workspace, self.x), index).sub_(EPS)

    @property
    def prediction_shared(self) -> bool:
        """Whether the run computes this iterate's prediction anyway (done, or its next
        iteration starts from here): :meth:`mean` then costs no convolution of its own."""
        return self.next_from_here or self._loop.fitted is self.x

    def workspace(self):
        """Buffers of its own in which :meth:`mean_at` can compute this run's predictions."""
        return self._loop.fm.conv.workspace(tuple(self.x.shape), self.x.dtype, self.x.device)

    def nll(self) -> float:
        """The PKL misfit Σ m·(μ' − y'·log(μ' + ε)) of this iterate (m: the fit mask, y' =
        max(y + s², 0)): :meth:`pkl_dg.guidance.PoissonKL.nll` from μ already computed."""
        return self._loop.nll(self.x)


def _border_slabs(shape: tuple[int, ...], width: tuple[int, ...]) -> list[tuple]:
    """Index tuples covering, each pixel once, the pixels within ``width`` of an edge."""
    slabs = []
    for a, (n, w) in enumerate(zip(shape, width)):
        for end in (slice(0, w), slice(n - w, n)):
            idx = [slice(wj, nj - wj) if j < a else slice(None)
                   for j, (nj, wj) in enumerate(zip(shape, width))]
            idx[a] = end
            slabs.append((Ellipsis,) + tuple(idx))
    return slabs


class _Normaliser:
    """x ← x / Aᵀ1 in place, touching only the border when it can.

    Farther than the PSF radius r from every edge Aᵀ1 is the constant ΣPSF (see
    :meth:`~pkl_dg.physics.convolution.PSFConvolution.adjoint_ones`): there the division
    is by ΣPSF, skipped when 1/ΣPSF rounds to 1 (a normalised PSF), and only slabs of
    2r + 1 pixels along the edges are multiplied by their 1/Aᵀ1 — one image-sized pass
    fewer per iteration. With a fit mask (Aᵀmask is not constant) or a batch, every pixel.
    """

    def __init__(self, norm: torch.Tensor, fm: ForwardModel) -> None:
        conv = fm.conv
        inv = 1.0 / norm.clamp(min=1e-6)
        self.inv, self.slabs, self.scale = inv, None, 1.0
        shape, width = tuple(inv.shape), tuple(2 * r + 1 for r in conv.radius)
        if getattr(fm, "mask", None) is None and inv.ndim == conv.ndim and \
                all(n > 2 * w for n, w in zip(shape, width)):
            self.scale = float(torch.tensor(1.0 / float(conv.psf.sum()), dtype=inv.dtype))
            self.slabs = [(idx, inv[idx] / self.scale) for idx in _border_slabs(shape, width)]
            if inv.device.type == "cpu":  # small slabs: numpy is cheaper (see ConvWorkspace)
                self.slabs = [(idx, f.numpy()) for idx, f in self.slabs]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.slabs is None:
            return x.mul_(self.inv)
        if self.scale != 1.0:
            x.mul_(self.scale)
        a = x.numpy() if x.device.type == "cpu" else x
        for idx, factor in self.slabs:
            view = a[idx]
            view *= factor  # in place on the view (no write-back through __setitem__)
        return x


class _RLLoop:
    """Buffers and the fit cache of one RL run (see :func:`rl_iterates`)."""

    def __init__(self, y: torch.Tensor, fm: ForwardModel, banded: bool = False) -> None:
        self.fm = fm
        self.ws = fm.conv.workspace(tuple(y.shape), y.dtype, y.device, banded=banded)
        s2 = fm.read_noise_var
        ys = (y + s2).clamp(min=0)
        self.mask = None if fm.mask is None else fm.mask.to(y.device, y.dtype)
        self.ys = ys if self.mask is None else ys * self.mask  # weight(ys / μ) = (m·ys) / μ
        b = fm.background
        if torch.is_tensor(b):
            self.bias, self.floor = b.to(y.device, y.dtype) + (s2 + EPS), s2 + EPS
        else:
            self.bias, self.floor = float(b) + s2 + EPS, s2 + EPS
        # max(A x + B, 0) + s² + ε of `self.fitted`: a view of the workspace's output,
        # computed in place (no buffer of its own), valid until the next adjoint
        self.mu = self.ws.output()
        self.fitted: torch.Tensor | None = None
        self.log_mu: torch.Tensor | None = None  # scratch of the misfit readout

    def fit(self, x: torch.Tensor) -> torch.Tensor:
        """μ' + ε of ``x`` in the loop's buffer (cached for the last tensor fitted)."""
        if self.fitted is not x:
            self.mu = self.predict(self.ws, x)
            self.fitted = x
        return self.mu

    def predict(self, ws, x: torch.Tensor) -> torch.Tensor:
        """μ' + ε of ``x`` computed in the buffers of ``ws`` (a view of them)."""
        # max(A x + B, 0) + s² + ε = max(A x + B + s² + ε, s² + ε)
        if torch.is_tensor(self.bias):
            return ws.A(x).add_(self.bias).clamp_(min=self.floor)
        # a constant rides on the FFT's zero-frequency bin: one pass fewer
        return ws.A(x, self.bias).clamp_(min=self.floor)

    def fit_constant(self, x: torch.Tensor, blurred: float) -> None:
        """Record the fit of an ``x`` whose blur A x is the constant ``blurred``."""
        self.mu = self.ws.output()
        self.mu.copy_(torch.clamp(blurred + torch.as_tensor(self.bias, dtype=self.mu.dtype,
                                                            device=self.mu.device),
                                  min=self.floor).expand_as(self.mu))
        self.fitted = x

    def nll(self, x: torch.Tensor) -> float:
        mu = self.fit(x)
        if self.mask is None:
            fit_term, pixels = float(mu.sum()), mu.numel()
        else:
            fit_term, pixels = float((mu * self.mask).sum()), float(self.mask.expand_as(mu).sum())
        # μ' + ε ≥ ε > 0, so y'·log(μ' + ε) needs no xlogy (which is 2–3× slower than log)
        if self.log_mu is None:
            self.log_mu = torch.empty_like(mu)
        torch.log(mu, out=self.log_mu)
        data_term = float(torch.dot(self.ys.reshape(-1), self.log_mu.reshape(-1)))
        return fit_term - data_term - EPS * pixels

    def correction(self, x: torch.Tensor) -> torch.Tensor:
        """Aᵀ(m·y' / (μ' + ε)) at ``x`` (a view of the workspace, valid until the next call)."""
        torch.div(self.ys, self.fit(x), out=self.ws.adjoint_input())
        self.fitted = None  # the adjoint overwrites the buffer μ lives in
        return self.ws.adjoint()


def rl_iterates(y: torch.Tensor, fm: ForwardModel, iterations: int, tv_weight: float = 0.0,
                x0: torch.Tensor | None = None, *, accelerate: bool = False,
                stop: Callable[[RLIterate], bool] | None = None,
                alpha_max: float = ALPHA_MAX, plain_first: int = 0) -> Iterator[RLIterate]:
    """Run Richardson–Lucy and yield every iterate with its misfit readout.

    Parameters
    ----------
    y
        Data in photons, shape ``(..., [Z,] Y, X)`` (the forward model's PSF acts on the
        last 2 or 3 axes), float32 or float64.
    fm
        Forward model (FFT backend): PSF blur, background, read-noise variance, mask.
    iterations
        Most iterations to run (≥ 1).
    tv_weight
        Total-variation weight λ_TV ≥ 0 (Dey et al. 2006); 0 = plain RL.
    x0
        Start (default :func:`initial_estimate`); copied, never modified.
    accelerate
        Biggs–Andrews vector extrapolation (see the module docstring).
    alpha_max
        Upper clip of the extrapolation factor α with ``accelerate``.
    plain_first
        With ``accelerate``, the first ``plain_first`` iterations are plain RL ones (α = 0);
        the extrapolation starts from their changes. (PKL's data budget pass,
        :func:`~pkl_dg.guidance.data_budget.budget_pass`.)
    stop
        Called with each iterate after it is yielded; returning True ends the run there (a
        stopping rule, e.g. a discrepancy principle on ``it.mean()``). A rule with a
        ``defer(it, threads)`` (:class:`~pkl_dg.guidance.stopping.AutoStop`) is judged on a
        helper thread while the next iteration runs, when a small image's iterations run on
        one thread of several (the next iterate is dropped if the rule ends the run): BioSR
        F-actin 502², 2 threads, 106 iterations to the stall in 358 instead of 443 ms, the
        same iterates (``/work/exp22/pipe.py``). Otherwise, with two or more threads, a 2D
        image of 432²–1200² (FFT grid) has its convolutions done in two bands on two threads
        (:class:`~pkl_dg.physics.bands.BandedWorkspace`; equal up to float rounding): BioSR,
        100 iterations 2.63 → 2.24 ms each (``/work/exp23/rlauto.py``). (Bands beside the
        judge were slower: 355 against 338 ms to the stall; both need the second core.)

    Yields
    ------
    RLIterate
        Iterate ``k = 1, 2, …``; its ``x`` is a new tensor every iteration.

    Raises
    ------
    ValueError
        ``iterations < 1`` or ``tv_weight < 0``.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be ≥ 1, got {iterations}")
    if tv_weight < 0:
        raise ValueError(f"TV weight must be ≥ 0, got {tv_weight}")
    # a small image's iterations on one thread (see pkl_dg.threads.one_thread); with threads
    # to spare, the stop judges an iterate on a helper thread while the next one is computed
    # (which is dropped if the stop says so), or else (a larger image, or no such stop) the
    # convolutions go in bands, one per thread (pkl_dg.physics.bands)
    n = torch.get_num_threads()
    small = y.device.type == "cpu" and math.prod(y.shape[:-fm.conv.ndim]) * math.prod(
        fm.conv.padded_shape(*y.shape[-fm.conv.ndim:])) < ONE_THREAD_BELOW_PX
    threads = n if small and hasattr(stop, "defer") else 1
    banded = threads < 2 and use_bands(y, fm.conv, n)
    single = small or banded
    loop = _RLLoop(y, fm, banded)
    normalise = _Normaliser(fm.adjoint_ones(y), fm)
    norm = fm.adjoint_ones(y) if tv_weight > 0 else None
    if x0 is None:  # flat start: reflect padding keeps it flat, so A x = x·ΣPSF (no FFT)
        x = initial_estimate(y, fm)
        loop.fit_constant(x, float(x.reshape(-1)[0]) * float(fm.conv.psf.sum()))
    else:
        x = x0.clone()
    x_prev = g = g_prev = None
    gg_prev = 0.0
    buffers = IteratePool(y)
    pending = None
    for k in range(1, iterations + 1):
        with one_thread(single):
            alpha, base = 0.0, x
            if accelerate and g_prev is not None and k > plain_first:
                alpha = float(torch.vdot(g.reshape(-1), g_prev.reshape(-1))) / (gg_prev + 1e-30)
                alpha = min(max(alpha, 0.0), alpha_max)
            if alpha > 0:
                # x + α(x − x_prev)
                base = torch.lerp(x_prev, x, 1.0 + alpha, out=buffers.take()).clamp_(min=0)
            corr = loop.correction(base)
            if tv_weight > 0:
                x_new = base * corr / (norm - tv_weight * _tv_divergence(base)).clamp(min=1e-6)
            else:
                x_new = normalise(torch.mul(base, corr, out=buffers.take()))
            if accelerate:
                x_new.clamp_(min=0)  # deconvlucy's positivity; FFT rounding can dip below 0
                if g is not None:
                    g_prev, gg_prev = g, float(torch.vdot(g.reshape(-1), g.reshape(-1)))
                g = torch.sub(x_new, base, out=buffers.take())
                x_prev = x
            x = x_new
        if pending is not None and pending():  # the previous iterate ends the run
            return
        it = RLIterate(k, x, alpha, loop, not accelerate or k < plain_first)
        yield it
        if stop is not None:
            with one_thread(single):
                if threads < 2:
                    if stop(it):
                        return
                else:
                    pending = stop.defer(it, threads)
    if pending is not None:  # the last iterate's judgement: the rule's record
        pending()


def richardson_lucy_iter(y: torch.Tensor, fm: ForwardModel, iterations: int,
                         tv_weight: float = 0.0, x0: torch.Tensor | None = None, *,
                         accelerate: bool = False,
                         stop: Callable[[RLIterate], bool] | None = None
                         ) -> Iterator[torch.Tensor]:
    """Yield the estimate after each RL iteration (photons); see :func:`rl_iterates`."""
    for it in rl_iterates(y, fm, iterations, tv_weight, x0, accelerate=accelerate, stop=stop):
        yield it.x


def richardson_lucy(y: torch.Tensor, fm: ForwardModel, iterations: int,
                    tv_weight: float = 0.0, *, accelerate: bool = False) -> torch.Tensor:
    """The estimate after ``iterations`` RL iterations (see :func:`rl_iterates`)."""
    x = None
    for x in richardson_lucy_iter(y, fm, iterations, tv_weight, accelerate=accelerate):
        pass
    return x

"""An automatic iteration count for Richardson–Lucy that also holds for an inexact model.

The discrepancy principle (Bertero et al., Inverse Problems 26, 2010) stops RL once the
Poisson deviance D of the fit reaches its expected value E[D] (ratio r = D/E[D] ≤ 1): beyond
that the iterations fit noise. On real images the PSF and the background are never exact,
and r then levels off above 1 (measured: 12 for the BioSR F-actin pair with σ = 2 px, 2.5
with σ = 1.5 px), so that rule alone never stops. The second rule stops when the part of
the misfit that is above the noise level, r − 1, shrinks by less than ``STALL`` (0.5 %) per
iteration: the fit has stalled against model error, and further iterations mostly sharpen
noise and artefacts. Whichever comes first ends the run.

Both rules judge the deviance only over the **signal region**: the brightest quarter of
the first iterate's prediction (:func:`signal_region`). RL's multiplicative update fits a
dark field, and pulls its zero counts towards zero, within a few iterations; over all
pixels the deviance of a sparse object (bright structures on a dark field) then reaches its
expectation while the structures are still blurred, and a dim, dense object is driven on
by its dark pixels after its bright ones fit the noise. Measured on the dev set (``pkl-dg
bench quality --section real``; count / PSNR, all pixels → signal region, best iteration):
the flowdec bars 5 / 26.43 → 28 / 27.61 dB (best 19 / 27.78), the C. elegans crop 8 / 27.63
→ 3 / 30.66 (best 2 / 31.30), BioSR F-actin σ 2 98 / 22.56 → 108 / 22.57 (best 118 /
22.57). The quantile (0.75) was picked there from 0.6–0.9: 0.6 stops the bars at 8
iterations, 0.9 at 127 (27.13 and 25.35 dB).

The noise level itself is the sampler's target
(:func:`~pkl_dg.guidance.steps.auto_discrepancy` of the measurement's peak above
background, :func:`peak_photons`): 1.0 up to 30 photons peak, 0.95 from 100: a fit that resolves much detail may go below the expected deviance by
the degrees of freedom it resolves. On the plugin's ``cells`` sample (≈140 photons peak) a
target of 1.0 stopped RL at 20 iterations (25.14 dB; best 64, 26.27), the brightness's
target at 37 (26.12); the dev-set inputs above are unchanged (bars and C. elegans are at 20
photons peak, the BioSR pair stalls first).

The rule is a ``stop`` callable for :func:`pkl_dg.richardson_lucy.rl_iterates`: it reads
each iterate's forward prediction, which plain RL computes anyway for its next iteration,
so it costs no extra convolution.
"""

from __future__ import annotations

from typing import Callable

import torch

from pkl_dg.guidance.discrepancy import DevianceRatio
from pkl_dg.guidance.steps import auto_discrepancy
from pkl_dg.physics.forward import ForwardModel
from pkl_dg.quantiles import quantile
from pkl_dg.threads import beside

#: the misfit above the noise level must shrink by at least this fraction per iteration
STALL = 0.005
#: an accelerated (Biggs–Andrews) iteration fits about as far as this many plain ones, so
#: its stall threshold is this many times ``STALL``. Measured on the BioSR F-actin dev pair
#: (σ 2 px): plain RL's best at iteration 124, accelerated's at 44 (2.8×; within 0.02 dB of
#: plain's best at 37, 3.4×). With the plain threshold the accelerated run stopped at 105
#: iterations, 22.23 dB (plain's automatic count: 108, 22.57); with 3× at 39, 22.56 dB
#: (fitted σ 1.87: 130 → 47 iterations, 22.67 → 23.00 dB; plain 129, 23.00). On phantoms
#: restored with a too-wide Gaussian (6 cases, ``/work/exp22/acctest.py``) accelerated RL with
#: 3× stopped within +0.03 to +0.17 dB of plain RL's automatic count in 0.36–0.42 of its
#: iterations; with 1× it was 1.0–2.5 dB below.
ACCELERATED_STALL = 3.0
#: iterations always run before a stop is considered, and the most ever run
MIN_ITERATIONS, MAX_ITERATIONS = 2, 500
#: a fit that stalls above this many times its noise target is reported (:func:`misfit_note`)
MISFIT_WARN = 3.0


class ModelMismatchWarning(UserWarning):
    """The forward model (PSF, calibration) does not explain the data down to their noise."""
#: the deviance is judged on pixels whose first prediction is above this quantile
SIGNAL_QUANTILE = 0.75
#: pixels read to find that quantile
QUANTILE_SAMPLE = 1 << 16


def signal_region(mu: torch.Tensor, fit: torch.Tensor | None = None) -> torch.Tensor:
    """The pixels the stop judges: the brightest ``1 − SIGNAL_QUANTILE`` of the prediction.

    Parameters
    ----------
    mu
        Predicted mean in photons (an early iterate's A·x + b), (H, W) or (Z, H, W).
    fit
        Pixels in the data fit (bool, same shape), or None for all; others never count.

    Returns
    -------
    torch.Tensor
        bool, shape of ``mu``.
    """
    level = _quantile(mu if fit is None else mu[fit], SIGNAL_QUANTILE)
    region = mu >= level
    return region if fit is None else region & fit


def peak_photons(y: torch.Tensor, fm: ForwardModel) -> float:
    """The measurement's peak above the background: its 99.9th percentile less the
    background, photons (a strided sample of the pixels)."""
    background = float(torch.as_tensor(fm.background, dtype=torch.float64).mean())
    return _quantile(y, 0.999) - background


def _quantile(values: torch.Tensor, q: float) -> float:
    """The ``q`` quantile of a strided sample of at most ~``QUANTILE_SAMPLE`` values."""
    flat = values.reshape(-1)
    return quantile(flat[:: max(1, flat.numel() // QUANTILE_SAMPLE)], q)


class AutoStop:
    """The automatic stop, as a ``stop`` rule for :func:`~pkl_dg.richardson_lucy.rl_iterates`.

    Parameters
    ----------
    y
        Measurement in photons, (H, W) or (Z, H, W).
    fm
        The forward model of the run (its mask, if any, leaves pixels out of the deviance).
    accelerated
        The run's iterations are Biggs–Andrews accelerated (the stall threshold is
        :data:`ACCELERATED_STALL` × :data:`STALL`).
    plain_first
        With ``accelerated``, the run's first ``plain_first`` iterations are plain ones
        (``plain_first`` of :func:`~pkl_dg.richardson_lucy.rl_iterates`): judged with the
        plain threshold.

    Attributes
    ----------
    k
        Iterations seen so far (the count when the run has ended).
    ratio
        Deviance ratio D/E[D] of the latest iterate (over the signal region).
    target
        The ratio that counts as the noise level for this measurement's brightness.
    reason
        Why the rule fired: ``"noise level"`` or ``"stalled"`` (``""`` if it has not).
    """

    def __init__(self, y: torch.Tensor, fm: ForwardModel, accelerated: bool = False,
                 plain_first: int = 0) -> None:
        self.stall = STALL * (ACCELERATED_STALL if accelerated else 1.0)
        self.accelerated, self.plain_first = accelerated, plain_first if accelerated else 0
        self.ys = (y + fm.read_noise_var).clamp(min=0)
        self.fit = None if fm.mask is None else fm.mask.to(y.device, y.dtype) > 0
        self.k, self.ratio, self.reason = 0, float("inf"), ""
        self._prev: float | None = None
        self.signal: torch.Tensor | None = None
        self._deviance: DevianceRatio | None = None  # against the data there
        self._where: torch.Tensor | None = None  # its flat indices (a gather, not a mask)
        self._workspace = None  # the helper's buffers for accelerated iterates' predictions
        self.target = auto_discrepancy(peak_photons(y, fm))

    @property
    def equivalent(self) -> int:
        """The iterations seen so far in plain RL iterations: an accelerated one counts as
        :data:`ACCELERATED_STALL` (it fits about as far; see there)."""
        if not self.accelerated:
            return self.k
        plain = min(self.k, self.plain_first)
        return plain + round(ACCELERATED_STALL * (self.k - plain))

    def __call__(self, it) -> bool:
        """Whether the run ends at iterate ``it``."""
        return self.defer(it)()

    def defer(self, it, threads: int = 1) -> Callable[[], bool]:
        """Read what the rule needs of iterate ``it`` now (its prediction over the signal
        region: a gather, so the run may overwrite its buffers) and judge it on a helper
        thread when the run has ``threads`` ≥ 2 (:func:`pkl_dg.threads.beside`), while the
        next iteration runs; else when asked. Returns the callable that gives the decision
        (and updates the attributes); call it before the next ``defer``.

        An accelerated iterate's prediction is not the run's (that is at the extrapolated
        point): with a helper, the helper computes it in buffers of its own, so the run does
        not wait for those two FFTs (BioSR F-actin 502², 2 threads, PKL's budget pass of 44
        iterations: 211 → 164 ms, the same count and ratio; ``/work/exp26/judge_far.py``).
        """
        if self.signal is None:
            self.signal = signal_region(it.mean().reshape(self.ys.shape), self.fit)
            self._where = self.signal.reshape(-1).nonzero().squeeze(1)
            self._deviance = DevianceRatio(self.ys.reshape(-1).index_select(0, self._where))
        if threads >= 2 and not it.prediction_shared:
            return beside(self._judge_apart, it, threads=threads)
        return beside(self._judge, it.k, it.mean_at(self._where), threads=threads)

    def _judge_apart(self, it) -> bool:
        """Judge ``it`` with its prediction computed in the rule's own buffers."""
        with torch.inference_mode(it.x.is_inference()):
            if self._workspace is None:
                self._workspace = it.workspace()
            return self._judge(it.k, it.mean_at(self._where, self._workspace))

    def _judge(self, k: int, mu: torch.Tensor) -> bool:
        ratio = self._deviance(mu)
        self.k, prev, self._prev, self.ratio = k, self._prev, ratio, ratio
        if self.k <= MIN_ITERATIONS:
            return False
        if ratio <= self.target:
            self.reason = "noise level"
        elif prev is not None and (prev - ratio) < (
                self.stall if k > self.plain_first else STALL) * (ratio - self.target):
            self.reason = "stalled"
        return bool(self.reason)


def misfit_note(rule: AutoStop) -> str | None:
    """What to tell the user when the automatic stop ``rule`` stalled far above the noise.

    Richardson–Lucy's deviance ratio falls to its noise target when the PSF and the photon
    calibration fit the data. It stalls above it when they cannot: a PSF wider than the real
    one cannot make the data's sharp detail (measured on the BioSR F-actin pair: the ratio
    stalls at 12.9 with a Gaussian of σ 2 px and 7.8 with the best-fitting σ 1.87; the
    flowdec bars, C. elegans and W2S inputs reach their targets). Above :data:`MISFIT_WARN`
    times the target the message says so; None otherwise.
    """
    if rule.reason != "stalled" or rule.ratio <= MISFIT_WARN * rule.target:
        return None
    # the reason first: a napari notification shows only its first few words until opened
    return (f"the PSF does not fit this image (or the camera calibration does not): the "
            f"data are not explained down to their noise, the best data fit stalled at "
            f"{rule.ratio:.1f}× the noise level (the deviance ratio of Richardson–Lucy's "
            "automatic iteration count, which also sets PKL's data budget; ≈ 1 where the model "
            "fits), and the result follows from that fit. A PSF closer to the real one fits "
            "better: "
            "one measured from beads on this microscope fits best (a PSF computed from the "
            "optics, even the right NA and wavelength, leaves out the real one's aberrations: "
            "a refractive-index mismatch, depth, a tilted or dirty objective); then the "
            "optics' PSF with the sample's refractive index and depth; then a fitted σ.")

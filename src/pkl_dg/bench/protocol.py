"""The validation protocol: how a restoration is scored, and the Richardson–Lucy oracle.

Scores follow the CARE protocol (DESIGN §4): the ground truth is normalised by its 0.1 and
99.9 percentiles, the prediction fitted to it by least squares (scale and offset), then
PSNR (data range 1) and SSIM (:func:`pkl_dg.metrics.care_scores`); :func:`score` adds the
FRC resolution against the ground truth (1/7 threshold, pixels).

The RL oracle runs Richardson–Lucy on a measurement, scores iterates against the ground
truth and keeps the best: the most RL can give with a perfect stopping rule, which no user
has. It takes any stream of iterates, so the same loop scores RL with a known background
(:func:`rl_iterates`) and RL as :func:`pkl_dg.restore_iter` runs it on real data.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from pkl_dg.metrics import care_scores, fit_affine, normalize_percentile


def psnr(pred: np.ndarray, gnorm: np.ndarray) -> float:
    """CARE PSNR (dB) of ``pred`` against an already normalised ground truth.

    The PSNR of :func:`pkl_dg.metrics.care_scores` without its SSIM, for scoring many
    iterates against one ``gnorm = normalize_percentile(gt)``.

    Parameters
    ----------
    pred : ndarray
        The restoration (any scale and offset).
    gnorm : ndarray
        ``normalize_percentile(gt)``, the shape of ``pred``.

    Returns
    -------
    float
        PSNR in dB (data range 1); inf for a perfect fit.
    """
    p = fit_affine(pred, gnorm)
    mse = float(np.mean((p - gnorm) ** 2))
    return 10 * np.log10(1.0 / mse) if mse > 0 else float("inf")


def score(pred: np.ndarray, gt: np.ndarray) -> dict:
    """CARE PSNR and SSIM, and the FRC resolution of ``pred`` against ``gt``.

    Parameters
    ----------
    pred, gt : ndarray
        Restoration and ground truth, same shape.

    Returns
    -------
    dict
        ``psnr`` (dB), ``ssim``, ``frc_px`` (pixels; inf when nothing correlates above
        the threshold, e.g. a constant prediction).
    """
    from pkl_dg.frc import frc_resolution

    s = care_scores(pred, gt)
    try:
        frc = frc_resolution(pred, gt).resolution_px
    except ValueError:  # constant prediction: nothing resolved
        frc = float("inf")
    return {"psnr": s["psnr"], "ssim": s["ssim"], "frc_px": frc}


@dataclass
class OracleResult:
    """The best iterate of an RL run, by PSNR against the ground truth.

    ``seconds`` is the time spent producing iterates up to the best one (scoring
    excluded). ``ssim`` / ``ssim_iteration``: the best SSIM over the scored iterates and
    where it was (None unless asked for: SSIM is costly).
    """

    image: np.ndarray
    iteration: int
    psnr: float
    seconds: float
    ssim: float | None = None
    ssim_iteration: int | None = None


def rl_oracle(iterates: Iterable[np.ndarray], gt: np.ndarray, *,
              score_at: Collection[int] | None = None, with_ssim: bool = False) -> OracleResult:
    """Score a stream of RL iterates against ``gt`` and keep the best (an oracle).

    Parameters
    ----------
    iterates : iterable of ndarray
        The estimate after iteration 1, 2, … (each may be a view the next iteration
        overwrites: the best one is copied).
    gt : ndarray
        Ground truth, the shape of an iterate.
    score_at : collection of int, optional
        Score only these iterations (default: every one).
    with_ssim : bool
        Also track the best SSIM and its iteration (:func:`pkl_dg.metrics.care_scores`).

    Returns
    -------
    OracleResult

    Raises
    ------
    ValueError
        No iterate was scored (an empty stream, or none of ``score_at`` reached).
    """
    gnorm = normalize_percentile(gt)
    best: OracleResult | None = None
    best_ssim, best_ssim_at = -np.inf, 0
    elapsed = 0.0
    stream = iter(iterates)
    for i in itertools.count(1):
        t0 = time.perf_counter()
        x = next(stream, None)
        elapsed += time.perf_counter() - t0
        if x is None:
            break
        if score_at is not None and i not in score_at:
            continue
        if with_ssim:
            s = care_scores(x, gt)
            p = s["psnr"]
            if s["ssim"] > best_ssim:
                best_ssim, best_ssim_at = s["ssim"], i
        else:
            p = psnr(x, gnorm)
        if best is None or p > best.psnr:
            best = OracleResult(np.array(x, copy=True), i, p, elapsed)
    if best is None:
        raise ValueError("the RL oracle scored no iterate (empty run, or no iteration of "
                         "score_at reached)")
    if with_ssim:
        best.ssim, best.ssim_iteration = float(best_ssim), best_ssim_at
    return best


def rl_iterates(y: np.ndarray, psf: np.ndarray, background: float,
                iterations: int) -> Iterator[np.ndarray]:
    """Richardson–Lucy on a measurement with a known background: every iterate, as numpy.

    Parameters
    ----------
    y : ndarray
        Measurement in photons.
    psf : ndarray
        The PSF (cleaned by :func:`pkl_dg.physics.prepare_psf` first, as restore does).
    background : float
        Background in photons per pixel.
    iterations : int
        Number of iterations.

    Yields
    ------
    ndarray
        The estimate after each iteration (photons; a view of the running estimate).
    """
    from pkl_dg.physics import ForwardModel, PSFConvolution, prepare_psf
    from pkl_dg.richardson_lucy import richardson_lucy_iter

    fm = ForwardModel(PSFConvolution(prepare_psf(psf)), background)
    run = richardson_lucy_iter(torch.from_numpy(y), fm, iterations)
    for _ in range(iterations):
        with torch.inference_mode():  # only while RL runs, not while the caller scores
            x = next(run, None)
        if x is None:
            return
        yield x.numpy()

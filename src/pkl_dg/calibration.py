"""Photon calibration estimated from the image itself (Poisson–Gaussian noise fit).

Camera data are ``ADU = offset + (photons + read-noise electrons) / gain`` with the gain in
e⁻/ADU. Their variance is then affine in their mean (Foi et al. 2008, "Practical
Poissonian-Gaussian noise modeling and fitting for single-image raw-data", IEEE TIP 17):

    var(ADU) = a · (mean(ADU) − offset) + a² · σ_r²,   a = 1 / gain,  σ_r = read noise (e⁻).

:func:`estimate_calibration` fits ``var = a·mean + b`` on one image: a noise residual from a
high-pass filter with unit white-noise gain (a second-difference kernel: smooth,
band-limited fluorescence signal cancels, noise does not), pixels binned by the mean of a
ring around each residual's support and each bin's level measured on the support itself
(independent noise, so the binning does not flatten the line), a variance per bin robust
to edges that leak through the filter (iterative clipping), and a weighted least-squares
line through the bins.

Only ``offset − a·σ_r²`` is fixed by (a, b). The offset is therefore read from the image's
dark level (a low percentile of the local mean; any constant background there is counted
as offset, which the shifted-Poisson model treats the same way) and the read noise is what
is left of ``b``: ``σ_r² = (b + a·offset) / a²``, or 0 (and offset = −b/a) when that is
negative. Everything is scale-free: the same image × c gives gain / c and offset × c, so the
photon image, and so the restoration, does not change.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from pkl_dg.threads import beside

#: second-difference (3×3) kernel; its squared sum is 36, so /6 gives unit gain on white noise
_HIGH_PASS = np.outer([1.0, -2.0, 1.0], [1.0, -2.0, 1.0]) / 6.0
_LOCAL = 7              # box size (px) of the local mean
_BINS = 16              # quantile bins of the local mean
_MIN_PER_BIN = 200      # pixels a bin needs to count
#: planes larger than this (px per side) are estimated on their central MAX_SIDE² crop
MAX_SIDE = 1024
_DARK_PERCENTILE = 1.0  # the image's dark level: its darkest 1 % of pixels


@dataclass(frozen=True)
class Calibration:
    """A photon calibration: ``photons = (ADU − offset) · gain``.

    Attributes
    ----------
    gain
        Conversion gain, e⁻/ADU (photo-electrons per camera unit).
    offset
        Camera baseline in ADU (with any constant dark/background level of the image).
    read_noise
        Gaussian read noise, rms e⁻.
    source
        ``"estimated"`` (from the image) or ``"given"`` (by the user).
    fit
        Diagnostics of an estimate: slope a (ADU), intercept b (ADU²), bins used, and the
        photons per pixel at the image's median and 99.9th percentile.
    """

    gain: float
    offset: float
    read_noise: float
    source: str = "given"
    fit: dict | None = None

    def to_photons(self, image: np.ndarray) -> np.ndarray:
        """``(image − offset) · gain`` as float32 (a new array; the input is not changed)."""
        return ((np.asarray(image, dtype=np.float32) - np.float32(self.offset))
                * np.float32(self.gain))

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def noise_residual(image: np.ndarray) -> np.ndarray:
    """High-pass residual whose variance equals the noise variance for white noise.

    Parameters
    ----------
    image
        (H, W) array, any units.

    Returns
    -------
    (H−2, W−2) float64 residual (valid part of the 3×3 filter).
    """
    img = np.asarray(image, dtype=np.float64)
    full = ndimage.correlate(img, _HIGH_PASS, mode="nearest")
    return full[1:-1, 1:-1]


def _clipped_variance(r: np.ndarray, k: float = 3.5, rounds: int = 4) -> float:
    """Variance of ``r`` after iterative k·σ clipping around the median (edges that leak
    through the high-pass filter are outliers; unlike the MAD, this stays right for the
    discrete residuals of low photon counts)."""
    sel = r
    dev = np.abs(r - np.median(r))  # the median is robust already: taken once, not per round
    for _ in range(rounds):
        sd = float(np.std(sel))
        if sd == 0:
            return 0.0
        new = r[dev <= k * sd]
        if new.size == sel.size:
            break
        sel = new
    # a k·σ clip removes a little of a Gaussian's variance: undo it (k = 3.5: 0.49 %)
    return float(np.var(sel) / _truncated_normal_variance(k))


def _truncated_normal_variance(k: float) -> float:
    """Variance of a standard normal truncated to [−k, k]: 1 − 2k·φ(k) / (2Φ(k) − 1)
    (Johnson, Kotz & Balakrishnan, *Continuous Univariate Distributions* 1, 1994, §10.1)."""
    phi = math.exp(-0.5 * k * k) / math.sqrt(2.0 * math.pi)
    return 1.0 - 2.0 * k * phi / math.erf(k / math.sqrt(2.0))


def fit_noise_curve(image: np.ndarray, mask: np.ndarray | None = None, *,
                    means: tuple[np.ndarray, np.ndarray] | None = None,
                    residual: np.ndarray | None = None
                    ) -> tuple[float, float, list[tuple[float, float, int]]]:
    """Fit ``var = a·mean + b`` to one 2D image (Foi et al. 2008, simplified).

    Parameters
    ----------
    image
        (H, W) image in camera units.
    mask
        Optional (H, W) bool array of pixels to use (e.g. not saturated).
    means, residual
        ``_ring_and_support_means(image)`` and ``noise_residual(image)`` when the caller
        has them already.

    Returns
    -------
    a, b, bins
        Slope (ADU per ADU), intercept (ADU²), and the (mean, variance, count) of each bin.

    Raises
    ------
    ValueError
        If the image is too small or too flat to fit a noise curve.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or min(img.shape) < 16:
        raise ValueError(f"the noise fit needs a 2D image of at least 16×16 pixels, got "
                         f"{img.shape}")
    r = noise_residual(img) if residual is None else residual
    # Bins are chosen on the mean of a ring around each 3×3 residual support, and each bin's
    # intensity is the mean over the supports themselves (weighted like the residual's
    # variance): two estimates with independent noise, so the choice of bins does not bias
    # the intensities (binning on a noisy mean attenuates the fitted slope).
    ring, support = means if means is not None else _ring_and_support_means(img)
    m, c = ring[1:-1, 1:-1], support[1:-1, 1:-1]
    keep = np.ones_like(r, dtype=bool)
    if mask is not None:
        keep &= ndimage.binary_erosion(mask, np.ones((3, 3)), border_value=1)[1:-1, 1:-1]
    r, m, c = r[keep], m[keep], c[keep]
    if r.size < _MIN_PER_BIN * 2:
        raise ValueError(f"too few usable pixels ({r.size}) to estimate the noise: set the "
                         "camera offset, gain and read noise by hand (calibration 'manual')")
    nbins = int(min(_BINS, r.size // _MIN_PER_BIN))  # small images: fewer, full bins
    # sorted by ring mean, each bin [edges[k], edges[k + 1]) (the last one closed) is a run
    # of consecutive pixels: one sort gives the quantile edges and groups the pixels (half
    # the time of a binary search per pixel plus a sort by bin index: 12 vs 21 ms at 512²,
    # the same bins)
    order = np.argsort(m)
    m_sorted = m[order]
    edges = np.unique(sorted_quantiles(m_sorted, np.linspace(0, 1, nbins + 1)))
    r, c = r[order], c[order]
    starts = np.concatenate([[0], np.searchsorted(m_sorted, edges[1:-1], side="left"),
                             [m_sorted.size]])
    spans = [(int(starts[k]), int(starts[k + 1])) for k in range(len(edges) - 1)
             if starts[k + 1] - starts[k] >= _MIN_PER_BIN]

    def stats(part: list[tuple[int, int]]) -> list[tuple[float, float, int]]:
        return [(float(np.mean(c[lo:hi])), _clipped_variance(r[lo:hi]), hi - lo)
                for lo, hi in part]

    upper = beside(stats, spans[len(spans) // 2:])  # half the bins on a helper thread
    bins = stats(spans[:len(spans) // 2]) + upper()
    if len(bins) < 2:
        raise ValueError("the image is too flat to estimate its noise (one intensity level)")
    level = max(abs(b[0]) for b in bins)
    if max(b[1] for b in bins) <= 1e-12 * max(level * level, 1e-300):  # round-off only
        raise ValueError("the image has no noise at all (synthetic or denoised data?): set "
                         "the camera offset, gain and read noise by hand (calibration "
                         "'manual')")
    mean = np.array([b[0] for b in bins])
    var = np.array([b[1] for b in bins])
    cnt = np.array([b[2] for b in bins], dtype=np.float64)
    # weighted least squares, three rounds: a variance estimate from n pixels has sd ≈ var·√(2/n),
    # so the weights are √n / (fitted variance), floored at 1 % of the largest
    fitted = np.full_like(var, var.mean())
    for _ in range(3):
        floor = 0.01 * max(float(np.max(fitted)), 1e-300)
        w = np.sqrt(cnt) / np.maximum(fitted, floor)
        design = np.stack([mean, np.ones_like(mean)], axis=1) * w[:, None]
        (a, b), *_ = np.linalg.lstsq(design, var * w, rcond=None)
        fitted = a * mean + b
    return float(a), float(b), bins


def sorted_quantiles(v: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``np.quantile(v, q)`` of an ascending 1-D ``v``, read off by index: numpy's default
    ('linear') method with its arithmetic (the same values), without its partition of
    ``v`` (1.3 ms of 250 k values)."""
    pos = (v.size - 1) * np.asarray(q, dtype=np.float64)
    lo = np.floor(pos).astype(np.intp)
    t = pos - lo
    a, b = v[lo], v[np.minimum(lo + 1, v.size - 1)]
    d = b - a
    return np.where(t >= 0.5, b - d * (1 - t), a + d * t)


def _ring_and_support_means(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ring mean, support mean) per pixel: the mean of the 7×7 box less its 3×3 centre, and
    the mean over the 3×3 residual support weighted like the residual's variance."""
    support = beside(ndimage.correlate, img, _HIGH_PASS ** 2, mode="nearest")
    box = ndimage.uniform_filter(img, _LOCAL, mode="nearest") * _LOCAL ** 2
    inner = ndimage.uniform_filter(img, 3, mode="nearest") * 9
    ring = (box - inner) / (_LOCAL ** 2 - 9)
    return _quantised(ring), support()


def _quantised(v: np.ndarray, levels: float = 1e6) -> np.ndarray:
    """``v`` on an integer grid of ``levels`` steps over its range: values that are equal in
    exact arithmetic (integer counts) stay equal whatever the data's scale, so the pixels a
    percentile or bin selects do not change when the image is multiplied by a constant."""
    lo, hi = float(np.min(v)), float(np.max(v))
    if hi <= lo:
        return np.zeros_like(v)
    return np.round((v - lo) / (hi - lo) * levels)


def dark_level(image: np.ndarray, mask: np.ndarray | None = None, *,
               means: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """The image's dark level: the mean of the darkest ``_DARK_PERCENTILE`` % of pixels,
    chosen by their ring mean and measured by their support mean (independent noise, so
    the choice does not pull the level down by the noise). ``means`` as in
    :func:`fit_noise_curve`."""
    ring, support = means if means is not None else _ring_and_support_means(
        np.asarray(image, dtype=np.float64))
    if mask is not None:
        ring, support = ring[mask], support[mask]
    cut = np.percentile(ring, _DARK_PERCENTILE)
    return float(np.mean(support[ring <= cut]))


def estimate_calibration(image: np.ndarray, saturated: np.ndarray | None = None) -> Calibration:
    """Estimate gain (e⁻/ADU), offset (ADU) and read noise (e⁻) from one image.

    Parameters
    ----------
    image
        (H, W) or (..., H, W) image in camera units (ADU, a normalised float, 8-bit, …).
        Stacks are fitted on their middle 2D plane, planes larger than ``MAX_SIDE`` on
        their central ``MAX_SIDE``² crop.
    saturated
        Optional bool mask (same shape) of pixels to leave out (clipped at the maximum).

    Returns
    -------
    Calibration
        ``source="estimated"`` with the fit's diagnostics.

    Raises
    ------
    ValueError
        If no signal-dependent noise is found (the noise does not grow with the signal:
        the data were denoised, are not from a camera, or are too flat). The message tells
        the user to set the calibration by hand.
    """
    arr = np.asarray(image)
    sat = None if saturated is None else np.asarray(saturated, dtype=bool)
    while arr.ndim > 2:  # middle plane of each leading axis
        mid = arr.shape[0] // 2
        arr = arr[mid]
        sat = None if sat is None else sat[mid]
    if max(arr.shape) > MAX_SIDE:  # a central crop holds statistics enough (and costs 1/16)
        r0, c0 = (max(arr.shape[0] - MAX_SIDE, 0) // 2, max(arr.shape[1] - MAX_SIDE, 0) // 2)
        arr = arr[r0:r0 + MAX_SIDE, c0:c0 + MAX_SIDE]
        sat = None if sat is None else sat[r0:r0 + MAX_SIDE, c0:c0 + MAX_SIDE]
    img = arr.astype(np.float64)
    # independent pieces on a helper thread when the run has two or more (numpy and scipy
    # release the GIL): on the BioSR dev image (502²) 28.0 ms on 1 thread, 19.8 on 2, the
    # same values (/work/exp22/calpar.py)
    residual = beside(noise_residual, img)
    means = _ring_and_support_means(img)  # shared by the fit and the dark level
    fit_px = None if sat is None else ~sat
    dark_later = beside(dark_level, img, fit_px, means=means)
    levels = beside(np.quantile, img, [0.5, 0.999])
    a, b, bins = fit_noise_curve(img, fit_px, means=means, residual=residual())
    span = bins[-1][0] - bins[0][0]
    if not a > 0 or not math.isfinite(a) or a * span < 1e-3 * max(bins[-1][1], 1e-300):
        raise ValueError("could not estimate the photon calibration: the noise does not grow "
                         "with the signal in this image (denoised or synthetic data?). Set "
                         "the camera offset, gain and read noise by hand")
    dark = dark_later()
    read_var = (b + a * dark) / (a * a)
    if read_var >= 0:
        offset, offset_from = dark, "dark level"
    else:  # the dark level is below the Poisson zero: no read noise left to explain
        offset, read_var, offset_from = -b / a, 0.0, "noise fit"
    gain = 1.0 / a
    median, p999 = levels()
    fit = {"slope_adu": a, "intercept_adu2": b, "bins": len(bins),
           "median_photons": float((median - offset) * gain),
           "p99_9_photons": float((p999 - offset) * gain), "offset_from": offset_from,
           "dark_level_adu": float(dark)}
    return Calibration(gain=gain, offset=offset, read_noise=math.sqrt(read_var),
                       source="estimated", fit=fit)

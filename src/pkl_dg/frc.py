"""Fourier ring correlation (FRC) and the resolution it implies.

FRC(r) = Re Σ_ring F_a·conj(F_b) / sqrt(Σ_ring |F_a|² · Σ_ring |F_b|²)

over rings of radial frequency r (cycles/pixel, 0 … 0.5 = Nyquist). Each image has its
mean subtracted and is apodised with a raised-cosine edge (Tukey) window before the FFT,
so the image borders do not add a bright cross to the spectrum that correlates between
any two images. Rings are one frequency sample (1 / shorter side) wide; on rectangular
images the radial frequency is physical (``fftfreq`` per axis), so rings are circles.

The resolution is 1 / r* pixels, r* being the first frequency where the curve drops below
the threshold (1/7 by default, for an image against a ground truth or for two
independent measurements; linear interpolation between ring centres). Conventions:

* a curve that never drops below the threshold (e.g. two identical images) resolves
  everything the pixel grid holds: the Nyquist limit, 2 pixels;
* a curve that is below the threshold already at the first ring (e.g. two independent
  noise images) resolves nothing: ``inf``.

Single-image FRC (:func:`frc_single`): the image is split into its (even row, even
column) and (odd row, odd column) sub-images. With Poisson or camera noise, which is
independent per pixel, these are two independent noisy views of the same object on a
grid twice as coarse, offset by half a sub-pixel along both axes. That offset is undone
exactly in Fourier space (a phase ramp) before the correlation, and the resolution is
converted back to original pixels (×2), so its Nyquist limit is 4 pixels. It is only
meaningful for raw data with pixel-independent noise (not for a deconvolved image, whose
noise is correlated between neighbours).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_THRESHOLD = 1.0 / 7.0
NYQUIST_PX = 2.0


@dataclass(frozen=True)
class FRCResult:
    """Resolution from an FRC curve.

    ``resolution_px`` is in pixels of the images given (2 = Nyquist, ``inf`` = nothing
    correlated); ``resolution_nm`` is set when a pixel size was given.
    """

    resolution_px: float
    resolution_nm: float | None
    threshold: float
    frequencies: np.ndarray
    correlation: np.ndarray

    def to_dict(self) -> dict:
        return {"resolution_px": self.resolution_px, "resolution_nm": self.resolution_nm,
                "threshold": self.threshold}


def tukey_window(shape: tuple[int, int], edge_fraction: float = 0.125) -> np.ndarray:
    """Separable window: 1 inside, a raised-cosine taper over ``edge_fraction`` of each side."""
    if not 0.0 <= edge_fraction <= 0.5:
        raise ValueError(f"edge fraction must be in [0, 0.5], got {edge_fraction}")

    def axis(n: int) -> np.ndarray:
        w = np.ones(n)
        m = int(round(edge_fraction * n))
        if m > 0:
            ramp = 0.5 * (1 - np.cos(np.pi * (np.arange(m) + 0.5) / m))
            w[:m] = ramp
            w[n - m:] = ramp[::-1]
        return w

    return np.outer(axis(shape[0]), axis(shape[1]))


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"FRC needs two 2D images, got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise ValueError(f"FRC needs two images of the same shape, got {a.shape} and {b.shape}: "
                         "crop or register them first")
    if min(a.shape) < 8:
        raise ValueError(f"images of shape {a.shape} are too small for FRC (need ≥ 8×8)")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("FRC input contains NaN or infinite values")
    for name, img in (("first", a), ("second", b)):
        if np.ptp(img) == 0:
            raise ValueError(f"the {name} image is constant: FRC is undefined")
    return a, b


def _ring_index(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Ring number of every FFT sample and the ring centre frequencies (cycles/pixel)."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    width = 1.0 / min(shape)
    ring = np.rint(np.hypot(fy, fx) / width).astype(np.int64)
    n_rings = int(math.floor(0.5 / width)) + 1  # rings 0 … Nyquist
    return ring, np.arange(n_rings) * width


def _spectra_curve(fa: np.ndarray, fb: np.ndarray, shape: tuple[int, int]
                   ) -> tuple[np.ndarray, np.ndarray]:
    ring, freqs = _ring_index(shape)
    n = len(freqs)
    keep = ring < n
    r = ring[keep]
    cross = np.bincount(r, weights=np.real(fa * np.conj(fb))[keep], minlength=n)
    pa = np.bincount(r, weights=(np.abs(fa) ** 2)[keep], minlength=n)
    pb = np.bincount(r, weights=(np.abs(fb) ** 2)[keep], minlength=n)
    denom = np.sqrt(pa * pb)
    corr = np.divide(cross, denom, out=np.zeros(n), where=denom > 0)
    # ring 0 is the (removed) mean: drop it
    return freqs[1:], np.clip(corr[1:], -1.0, 1.0)


def _prepare(img: np.ndarray, window: np.ndarray | None) -> np.ndarray:
    img = img - img.mean()
    if window is not None:
        img = img * window
    return img


def frc_curve(a: np.ndarray, b: np.ndarray, *, apodize: bool = True,
              edge_fraction: float = 0.125) -> tuple[np.ndarray, np.ndarray]:
    """The FRC of two same-shape 2D images.

    Returns
    -------
    frequencies
        Ring centres in cycles/pixel, from 1/min(H, W) up to 0.5 (Nyquist).
    correlation
        FRC value of each ring, in [−1, 1].

    Raises
    ------
    ValueError
        Shapes differ, images are not 2D, too small, non-finite or constant.
    """
    a, b = _check_pair(a, b)
    window = tukey_window(a.shape, edge_fraction) if apodize else None
    fa = np.fft.fft2(_prepare(a, window))
    fb = np.fft.fft2(_prepare(b, window))
    return _spectra_curve(fa, fb, a.shape)


def resolution_from_curve(frequencies: np.ndarray, correlation: np.ndarray,
                          threshold: float = DEFAULT_THRESHOLD) -> float:
    """Resolution (pixels) at the first drop of ``correlation`` below ``threshold``.

    Never below: the Nyquist limit, 2 px. Below already at the first ring: ``inf``.
    """
    f = np.asarray(frequencies, dtype=np.float64)
    c = np.asarray(correlation, dtype=np.float64)
    below = np.nonzero(c < threshold)[0]
    if below.size == 0:
        return NYQUIST_PX
    i = int(below[0])
    if i == 0:
        return math.inf
    c0, c1 = c[i - 1], c[i]
    f_cross = f[i - 1] + (c0 - threshold) / (c0 - c1) * (f[i] - f[i - 1])
    return float(max(1.0 / f_cross, NYQUIST_PX))


def frc_resolution(a: np.ndarray, b: np.ndarray, threshold: float = DEFAULT_THRESHOLD, *,
                   pixel_size_nm: float | None = None, apodize: bool = True) -> FRCResult:
    """Resolution of ``a`` against ``b`` (an independent repeat or the ground truth).

    Parameters
    ----------
    threshold
        FRC threshold; 1/7 (DESIGN §4) by default.
    pixel_size_nm
        When given, the result also carries the resolution in nm.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"FRC threshold must be in (0, 1), got {threshold}")
    if pixel_size_nm is not None and not pixel_size_nm > 0:
        raise ValueError(f"pixel size must be positive, got {pixel_size_nm} nm")
    freqs, corr = frc_curve(a, b, apodize=apodize)
    res = resolution_from_curve(freqs, corr, threshold)
    nm = res * pixel_size_nm if pixel_size_nm is not None else None
    return FRCResult(res, nm, threshold, freqs, corr)


def frc_single(image: np.ndarray, threshold: float = DEFAULT_THRESHOLD, *,
               pixel_size_nm: float | None = None) -> FRCResult:
    """Single-image FRC of raw data by the diagonal sub-image split (module docstring).

    Frequencies of the returned curve are in cycles per *original* pixel (0 … 0.25);
    the resolution is in original pixels (Nyquist limit 4 px).
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"single-image FRC needs a 2D image, got shape {img.shape}")
    h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    a, b = _check_pair(img[0:h:2, 0:w:2], img[1:h:2, 1:w:2])
    window = tukey_window(a.shape, 0.125)
    fa = np.fft.fft2(_prepare(a, window))
    fb = np.fft.fft2(_prepare(b, window))
    # b samples the object at +(½, ½) sub-image pixels: shift it back by that much
    ky = np.fft.fftfreq(a.shape[0])[:, None]
    kx = np.fft.fftfreq(a.shape[1])[None, :]
    fb = fb * np.exp(-2j * np.pi * 0.5 * (ky + kx))
    freqs, corr = _spectra_curve(fa, fb, a.shape)
    res_sub = resolution_from_curve(freqs, corr, threshold)
    res = 2.0 * res_sub
    nm = res * pixel_size_nm if pixel_size_nm is not None else None
    return FRCResult(res, nm, threshold, freqs / 2.0, corr)


__all__ = ["DEFAULT_THRESHOLD", "FRCResult", "frc_curve", "frc_resolution", "frc_single",
           "resolution_from_curve", "tukey_window"]

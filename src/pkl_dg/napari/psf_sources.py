"""PSF helpers of the widget: bead extraction and PSF descriptions (no Qt).

A PSF image layer needs no helper: its data goes to the core as is (``build_psf`` takes the
in-focus plane of a stack, centres, crops and normalises it).

Bead extraction (:func:`psf_from_beads`) in simple documented steps:

1. Subtract the image's median (the background) and smooth with a Gaussian (σ = 1 px) to find
   peaks robustly.
2. Keep local maxima of the smoothed image that are the maximum of their ``box × box``
   neighbourhood, lie above 5 robust standard deviations (MAD) of the background and above
   20 % of the brightest peak.
3. Reject beads closer than ``box/2`` to an edge and beads with another detected peak inside
   their box (not isolated).
4. Crop a ``box × box`` window centred on each bead's brightest smoothed pixel and subtract
   the window's border median.
5. Sub-pixel alignment: measure the bead's intensity centroid (positive part of its central
   region) and shift the window by the fractional offset (cubic spline), so beads that sit
   at different sub-pixel positions do not blur the average. Divide by the sum.
6. Average the windows, clip negatives to 0, normalise to sum 1.
"""

from __future__ import annotations

import numpy as np

from pkl_dg.settings import RestoreSettings


def psf_from_beads(image: np.ndarray, box: int = 25, name: str = "bead image"
                   ) -> tuple[np.ndarray, int]:
    """Average PSF of the isolated beads in a 2D ``image``; returns ``(psf, n_beads)``.

    Raises ``ValueError`` (saying what to do) when no isolated bead is found.
    """
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"{name} must be 2D for bead extraction (got {img.ndim}D).")
    if not np.all(np.isfinite(img)):
        raise ValueError(f"{name} contains NaN or Inf values.")
    box = int(box) | 1  # odd
    half = box // 2
    bg = np.median(img)
    smooth = ndimage.gaussian_filter(img - bg, 1.0)
    mad = 1.4826 * np.median(np.abs(img - bg)) + 1e-12
    peaks = (smooth == ndimage.maximum_filter(smooth, size=box)) & (smooth > 5 * mad)
    ys, xs = np.nonzero(peaks)
    if len(ys):
        keep = smooth[ys, xs] >= 0.2 * smooth[ys, xs].max()
        ys, xs = ys[keep], xs[keep]
    h, w = img.shape
    windows = []
    for y, x in zip(ys, xs):
        if y < half or x < half or y >= h - half or x >= w - half:
            continue
        others = (np.abs(ys - y) <= half) & (np.abs(xs - x) <= half)
        if others.sum() > 1:
            continue
        win = img[y - half:y + half + 1, x - half:x + half + 1].copy()
        border = np.concatenate([win[0], win[-1], win[1:-1, 0], win[1:-1, -1]])
        win -= np.median(border)
        win = _centre_subpixel(win)
        total = win.sum()
        if total > 0:
            windows.append(win / total)
    if not windows:
        raise ValueError(f"No isolated bead found in {name}: it needs bright, separated "
                         f"spots at least {half} px from the edges (try a smaller bead box, "
                         "or a PSF image / Gaussian PSF instead).")
    psf = np.clip(np.mean(windows, axis=0), 0, None)
    return (psf / psf.sum()).astype(np.float32), len(windows)


def _centre_subpixel(win: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Shift a background-free bead window so its centroid is at the centre pixel."""
    from scipy import ndimage

    half = win.shape[0] // 2
    r = max(2, half // 2)
    core = np.s_[half - r:half + r + 1, half - r:half + r + 1]
    grid = np.arange(-r, r + 1, dtype=np.float64)
    out = win
    for _ in range(iterations):
        weights = np.clip(out[core], 0, None)
        total = weights.sum()
        if total <= 0:
            return out
        dy = float((weights.sum(axis=1) * grid).sum() / total)
        dx = float((weights.sum(axis=0) * grid).sum() / total)
        if max(abs(dy), abs(dx)) < 1e-3:
            break
        out = ndimage.shift(out, (-dy, -dx), order=3, mode="nearest")
    return out


def describe_psf(settings: RestoreSettings, source: str) -> str:
    """Short human description, used for the 'show PSF' layer name."""
    if source == "gaussian":
        sy = f", σy {settings.psf_sigma_y:g}" if settings.psf_sigma_y > 0 else ""
        return f"Gaussian σ {settings.psf_sigma:g} px{sy}"
    if source == "airy":
        return (f"Airy NA {settings.na:g}, {settings.wavelength_nm:g} nm, "
                f"{settings.pixel_size_nm:g} nm/px")
    if source == "file":
        return f"file {settings.psf_path}"
    if source == "layer":
        return "PSF layer"
    return "beads"

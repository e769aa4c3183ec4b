"""PSF helpers of the widget: bead extraction and PSF descriptions (no Qt).

A PSF image layer needs no helper: its data goes to the core as is, and ``psf_from_settings``
cleans it exactly like a PSF file or array (:mod:`pkl_dg.physics.psf_cleaning`: in-focus
plane in 2D, baseline and noise floor, sub-pixel centring, energy-keeping crop,
normalisation; its diagnostics go into the result's metadata).

Bead extraction (:func:`psf_from_beads`), on a 2D bead image or a 3D (Z, Y, X) bead stack
(for a 2D run, the stack's plane where the beads are in focus, :func:`~pkl_dg.physics.psf_cleaning.sharpest_plane`),
in simple documented steps (in 3D every "box" is a cube, at most the stack depth along Z):

1. Subtract the image's median (the background) and smooth with a Gaussian (σ = 1 px) to find
   peaks robustly.
2. Keep local maxima of the smoothed image that are the maximum of their ``box × box``
   neighbourhood, lie above 5 robust standard deviations (MAD) of the background and above
   20 % of the brightest peak.
3. Reject beads closer than ``box/2`` to an edge and beads with another detected peak inside
   their box (not isolated).
4. Crop a ``box × box`` window centred on each bead's brightest smoothed pixel and subtract
   its baseline, the median of its lateral border (the same baseline as every measured PSF,
   :func:`pkl_dg.physics.psf_cleaning.baseline_and_noise`).
5. Sub-pixel alignment: measure the bead's intensity centroid (positive part of its central
   region) and shift the window by the fractional offset (cubic spline), so beads that sit
   at different sub-pixel positions do not blur the average. Divide by the sum.
6. Average the windows, clip negatives to 0, normalise to sum 1. The average then goes
   through the same cleaning as any measured PSF (``psf_from_settings``).
"""

from __future__ import annotations

import numpy as np

from pkl_dg.psf_source import NO_BLUR
from pkl_dg.settings import RestoreSettings


def psf_from_beads(image: np.ndarray, box: int = 25, name: str = "bead image"
                   ) -> tuple[np.ndarray, int]:
    """Average PSF of the isolated beads in a 2D image or a 3D (Z, Y, X) bead stack;
    returns ``(psf, n_beads)``. In 3D the window is ``box`` along Z too, or the whole stack
    depth (made odd) when that is smaller.

    Raises ``ValueError`` (saying what to do) when no isolated bead is found.
    """
    from scipy import ndimage

    from pkl_dg.physics.psf_cleaning import baseline_and_noise

    img = np.asarray(image, dtype=np.float64)
    if img.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D image or a 3D (Z, Y, X) bead stack for bead "
                         f"extraction (got {img.ndim}D).")
    if not np.all(np.isfinite(img)):
        raise ValueError(f"{name} contains NaN or Inf values.")
    box = int(box) | 1  # odd
    sizes = [box] * img.ndim
    if img.ndim == 3:
        sizes[0] = min(box, img.shape[0] - (1 - img.shape[0] % 2))
    halves = np.array(sizes) // 2
    bg = np.median(img)
    smooth = ndimage.gaussian_filter(img - bg, 1.0)
    mad = 1.4826 * np.median(np.abs(img - bg)) + 1e-12
    peaks = (smooth == ndimage.maximum_filter(smooth, size=sizes)) & (smooth > 5 * mad)
    found = np.argwhere(peaks)
    if len(found):
        values = smooth[tuple(found.T)]
        found = found[values >= 0.2 * values.max()]
    shape = np.array(img.shape)
    windows = []
    for pos in found:
        if np.any(pos < halves) or np.any(pos >= shape - halves):
            continue
        if np.sum(np.all(np.abs(found - pos) <= halves, axis=1)) > 1:
            continue  # another bead inside the window: not isolated
        win = img[tuple(slice(p - h, p + h + 1) for p, h in zip(pos, halves))].copy()
        win -= baseline_and_noise(win)[0]
        win = _centre_subpixel(win)
        total = win.sum()
        if total > 0:
            windows.append(win / total)
    if not windows:
        raise ValueError(f"No isolated bead found in {name}: it needs bright, separated "
                         f"spots at least {box // 2} px from the edges (try a smaller bead box, "
                         "or a PSF image / Gaussian PSF instead).")
    psf = np.clip(np.mean(windows, axis=0), 0, None)
    return (psf / psf.sum()).astype(np.float32), len(windows)


def _centre_subpixel(win: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Shift a background-free bead window (2D or 3D) so its centroid is its centre pixel."""
    from scipy import ndimage

    halves = [n // 2 for n in win.shape]
    radii = [max(1, min(h, max(2, h // 2))) for h in halves]
    core = tuple(slice(h - r, h + r + 1) for h, r in zip(halves, radii))
    out = win
    for _ in range(iterations):
        weights = np.clip(out[core], 0, None)
        total = weights.sum()
        if total <= 0:
            return out
        offsets = []
        for axis, r in enumerate(radii):
            profile = weights.sum(axis=tuple(a for a in range(win.ndim) if a != axis))
            offsets.append(float((profile * np.arange(-r, r + 1)).sum() / total))
        if max(abs(o) for o in offsets) < 1e-3:
            break
        out = ndimage.shift(out, [-o for o in offsets], order=3, mode="nearest")
    return out


def describe_psf(settings: RestoreSettings, source: str) -> str:
    """Short human description, used for the 'show PSF' layer name."""
    if source == "gaussian":
        sy = f", σy {settings.psf_sigma_y:g}" if settings.psf_sigma_y > 0 else ""
        return f"Gaussian σ {settings.psf_sigma:g} px{sy}"
    if source == "airy":
        return (f"Airy NA {settings.na:g}, {settings.wavelength_nm:g} nm, "
                f"{settings.pixel_size_nm:g} nm/px")
    if source == "vectorial":
        return (f"vectorial NA {settings.na:g}, {settings.wavelength_nm:g} nm, n "
                f"{settings.immersion_ri:g}/{settings.sample_ri:g}")
    if source == "file":
        return f"file {settings.psf_path}"
    if source == "none":
        return NO_BLUR
    if source == "layer":
        return "PSF layer"
    if source == "beads":
        return "beads"
    raise ValueError(f"unknown PSF source {source!r}")


def describe_resolved(settings: RestoreSettings, source: str, notes: dict) -> str:
    """:func:`describe_psf`, the beads used and :func:`describe_diagnostics` of a PSF that
    :func:`pkl_dg.napari.worker.resolve_psf` built (``notes`` are its notes)."""
    desc = describe_psf(settings, source)
    if "psf_beads_used" in notes:
        plane = notes.get("psf_bead_plane")
        at = "" if plane is None else f" in focus at plane {plane}"
        desc += f" ({notes['psf_beads_used']} beads{at})"
    return desc + describe_diagnostics(notes.get("psf", {}))


def describe_diagnostics(info: dict) -> str:
    """The PSF diagnostics (:attr:`pkl_dg.psf_source.PSF.info`) in a few words, e.g.
    ``"; FWHM 4.77 × 4.76 px; centred from (-3.99, +4.00) px; 100.0 % of its energy kept"``."""
    parts = []
    fw = [f for f in info.get("fwhm_px", []) if f is not None]
    if fw:
        parts.append("FWHM " + " × ".join(f"{f:.2f}" for f in fw) + " px")
    cleaning = info.get("cleaning")
    if cleaning:
        off = cleaning["centroid_offset_px"]
        if max(abs(v) for v in off) >= 0.05:
            parts.append("centred from (" + ", ".join(f"{v:+.2f}" for v in off) + ") px")
        parts.append(f"{100 * cleaning['energy_kept']:.1f} % of its energy kept")
    if "resampled" in info:
        r = info["resampled"]
        parts.append("resampled from " + " × ".join(f"{v:g}" for v in r["from_spacing_nm"])
                     + " nm")
    return "".join("; " + p for p in parts)

"""One cleaning pipeline for every measured PSF (file, array, napari layer, bead average).

A PSF straight from the microscope is a crop of a camera image: it sits on the camera
baseline and background, carries read and shot noise, and the bead is rarely at the crop's
centre. Used as is, the flat baseline becomes part of the blur (two thirds of the kernel's
sum in field report 04) and the off-centre bead shifts every restored object by its offset.
:func:`clean_psf` therefore always runs, whatever the PSF's source, these steps:

1. **In-focus plane** of a 3D stack for 2D work (the plane with the most energy), unless the
   PSF is used in 3D.
2. **Baseline**: the median of the pixels on the lateral border (the outermost
   :data:`BORDER` px of Y and X, every plane) is subtracted; the noise σ is 1.4826 × their
   median absolute deviation.
3. **Noise floor**: values below :data:`FLOOR_SIGMAS` σ are set to 0, and so are regions
   above it that carry less than :data:`MIN_REGION_ENERGY` of the energy (noise spikes).
   A computed PSF (:func:`is_computed`: no negative values, not integer counts, no
   pedestal at its edge) has no noise: steps 2–3 leave it unchanged.
4. **Sub-pixel centring** on the intensity centroid (the point that keeps restored objects
   where they are): the PSF is placed on a zero canvas large enough to hold all of it around
   the centroid and shifted by the fractional part (cubic spline, negatives from ringing
   clipped).
5. **Cropping that keeps the energy**: to the smallest centred odd box that holds every
   pixel left above the floor (and at most ``max_size`` a side).
6. **Normalisation** to sum 1.

The diagnostics (:class:`PSFDiagnostics`) go into the result's metadata and the widget:
the centroid's offset from the centre of the supplied array, the fraction of the
above-floor energy the final crop keeps, and the FWHM along each axis.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

#: width (px) of the lateral border whose median is the baseline (1 px for tiny PSFs)
BORDER = 2
#: values below this many noise σ above the baseline are set to zero
FLOOR_SIGMAS = 3.0
#: a PSF without negative values whose border stays below this fraction of its peak is
#: taken as computed (noise-free): no baseline or noise floor is removed from it
COMPUTED_BORDER = 1e-3
#: above-floor regions with less than this fraction of the energy are noise, not PSF
MIN_REGION_ENERGY = 0.005
#: warn when the measured PSF's centroid is farther than this from the array's centre (px)
OFF_CENTRE_WARN_PX = 1.0
#: warn when the crop keeps less than this fraction of the PSF's energy
ENERGY_WARN = 0.95


class PSFWarning(UserWarning):
    """A measured PSF was changed noticeably by cleaning (recentred, cropped)."""


@dataclass
class PSFDiagnostics:
    """What cleaning found and did (all lengths in pixels of the supplied PSF).

    Attributes
    ----------
    measured_shape, kernel_shape
        The supplied array's shape (after taking the in-focus plane) and the final kernel's.
    in_focus_plane
        For a 3D PSF used in 2D: [the Z index of the plane taken, planes in all]; else None.
        (Not called "shape": tifffile takes JSON descriptions with a "shape" key for its own.)
    baseline, noise_sigma
        Subtracted border median and the border's noise σ (the PSF's own units).
    centroid_offset_px
        Centroid minus the array's geometric centre, per axis ((Z,) Y, X): how far off the
        centre the bead sat. The kernel is centred on the centroid.
    energy_kept
        Fraction of the above-floor energy inside the final crop (1.0 when nothing was cut).
    fwhm_px
        FWHM of the final kernel along each axis through its centre (None where the profile
        does not fall to half maximum inside the kernel).
    """

    measured_shape: list[int]
    kernel_shape: list[int]
    baseline: float
    noise_sigma: float
    centroid_offset_px: list[float]
    energy_kept: float
    fwhm_px: list[float | None]
    #: for a 3D PSF cut to 2D: [the plane taken, planes in all] (:func:`sharpest_plane`)
    in_focus_plane: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["in_focus_plane"] is None:  # said only where a plane was taken
            del d["in_focus_plane"]
        return d


def check_finite_nonzero(psf: np.ndarray, what: str = "PSF") -> None:
    """Raise ``ValueError`` (saying what to do) for empty, non-finite or all-≤0 PSFs."""
    if psf.size == 0:
        raise ValueError(f"{what} is empty: supply a PSF image with at least one pixel")
    if not np.all(np.isfinite(psf)):
        raise ValueError(f"{what} contains NaN or infinite values: fix or re-measure the PSF")
    if not np.any(psf > 0):
        raise ValueError(f"{what} has no positive values (all zero or negative): "
                         "check that the right image was chosen as PSF")


def sharpest_plane(stack: np.ndarray) -> int:
    """The Z index of a (Z, Y, X) stack (a PSF or beads) where it is in focus: the plane
    whose brightest spot, after subtracting the plane's median and smoothing (σ = 1 px, so
    one noisy pixel does not decide), is the highest.

    The plane of most energy does not find it: in a widefield stack every plane holds
    about the same light (only spread wider out of focus), so on a measured PSF the most
    energy fell 1 µm out of focus (4 % of the in-focus peak) and on flowdec's bead kernel
    gave a kernel 3× too wide.

    Raises
    ------
    ValueError
        ``stack`` is not 3D.
    """
    from scipy import ndimage

    arr = np.asarray(stack, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) stack, got shape {arr.shape}")
    peaks = [float(ndimage.gaussian_filter(p - np.median(p), 1.0).max()) for p in arr]
    return int(np.argmax(peaks))


def in_focus_plane(psf: np.ndarray) -> np.ndarray:
    """The in-focus Z-plane of a 3D PSF (:func:`sharpest_plane`)."""
    return psf[sharpest_plane(psf)]


def lateral_border(shape: tuple[int, ...], width: int = BORDER) -> np.ndarray:
    """Boolean mask of the outermost ``width`` px along Y and X (every plane)."""
    b = width if min(shape[-2:]) >= 4 * width + 1 else 1
    mask = np.ones(shape, dtype=bool)
    mask[..., b:-b, b:-b] = False
    return mask


def is_computed(arr: np.ndarray) -> bool:
    """True for a noise-free (computed) PSF, which cleaning leaves as it is.

    Measured PSFs have negative values (noise, once a baseline was subtracted), are integer
    camera counts, or sit on a pedestal (their edge's median above :data:`COMPUTED_BORDER`
    of the peak). Noise-free signs win: an edge of exactly equal values, or a PSF that is
    point-symmetric about its centre to 1e-5 (noise breaks symmetry), is computed.
    """
    if np.any(arr < 0):
        return False
    border = arr[lateral_border(arr.shape, 1)]
    if np.ptp(border) == 0:
        return True
    if np.allclose(arr, arr[..., ::-1, ::-1], rtol=1e-5, atol=1e-7 * float(arr.max())):
        return True
    if np.all(arr == np.round(arr)):
        return False
    return float(np.median(border)) <= COMPUTED_BORDER * float(arr.max())


def baseline_and_noise(arr: np.ndarray) -> tuple[float, float]:
    """Median and robust σ (1.4826·MAD) of the lateral border; (0, 0) for a computed PSF or
    one under 5 px a side."""
    if min(arr.shape[-2:]) < 5 or is_computed(arr):
        return 0.0, 0.0
    border = arr[lateral_border(arr.shape)]
    med = float(np.median(border))
    return med, float(1.4826 * np.median(np.abs(border - med)))


def fwhm_along_axes(psf: np.ndarray) -> list[float | None]:
    """FWHM (px) of ``psf`` along each axis, through its centre pixel."""
    from pkl_dg.physics.psf import fwhm_of

    centre = tuple(n // 2 for n in psf.shape)
    out: list[float | None] = []
    for axis in range(psf.ndim):
        idx = list(centre)
        idx[axis] = slice(None)
        try:
            out.append(round(fwhm_of(psf[tuple(idx)]), 4))
        except ValueError:
            out.append(None)
    return out


def _significant(above: np.ndarray, arr: np.ndarray) -> np.ndarray:
    """Keep the above-floor regions that carry the PSF: each connected region (8-connected,
    joined across 1-px gaps so rings stay with the core) holding at least
    :data:`MIN_REGION_ENERGY` of the energy, and the one with the maximum. Noise spikes
    above the floor are single pixels or pairs with almost no energy."""
    joined = ndimage.binary_dilation(above, structure=np.ones((3,) * arr.ndim, dtype=bool))
    labels, n = ndimage.label(joined, structure=np.ones((3,) * arr.ndim, dtype=bool))
    energy = ndimage.sum_labels(np.where(above, arr, 0.0), labels, np.arange(1, n + 1))
    keep = np.flatnonzero(energy >= MIN_REGION_ENERGY * energy.sum()) + 1
    keep = np.union1d(keep, [labels[np.unravel_index(np.argmax(np.where(above, arr, -np.inf)),
                                                     arr.shape)]])
    return above & np.isin(labels, keep)


def _centre_on_centroid(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A zero canvas with ``arr``'s centroid at its centre pixel; returns (canvas, centroid)."""
    centroid = np.array(ndimage.center_of_mass(arr))
    halves = [int(math.ceil(max(c, n - 1 - c))) + 2 for c, n in zip(centroid, arr.shape)]
    rounded = np.round(centroid).astype(int)
    canvas = np.zeros([2 * h + 1 for h in halves])
    dest = tuple(slice(h - r, h - r + n) for h, r, n in zip(halves, rounded, arr.shape))
    canvas[dest] = arr
    frac = centroid - rounded
    if np.any(np.abs(frac) > 1e-6):
        canvas = np.clip(ndimage.shift(canvas, -frac, order=3, mode="constant", cval=0.0),
                         0, None)
    return canvas, centroid


def clean_psf(psf: Any, *, keep_3d: bool = False, max_size: int | None = None,
              what: str = "PSF") -> tuple[np.ndarray, PSFDiagnostics]:
    """Clean a measured PSF into a centred, odd-sized kernel summing to 1.

    Parameters
    ----------
    psf
        2D (Y, X) or 3D (Z, Y, X) array in any units (ADU straight from the camera is fine).
    keep_3d
        Keep a 3D PSF as a volume; otherwise a 3D PSF gives its in-focus plane.
    max_size
        Largest side of the result (odd); energy beyond is cut and counted in
        ``energy_kept``.
    what
        Names the PSF in messages.

    Returns
    -------
    (kernel, diagnostics)
        float32 kernel with odd sides, centroid at the centre pixel, ≥ 0, sum 1.

    Raises
    ------
    ValueError
        Wrong dimensionality, NaN/Inf, nothing left above the baseline.

    Warns
    -----
    PSFWarning
        When the centroid was more than :data:`OFF_CENTRE_WARN_PX` px off the array's centre
        (it was centred) or the crop kept less than :data:`ENERGY_WARN` of the energy.
    """
    arr = np.asarray(psf, dtype=np.float64)
    plane = None
    if arr.ndim == 3 and not keep_3d:
        plane = [sharpest_plane(arr), arr.shape[0]]
        arr = arr[plane[0]]
    if arr.ndim not in ((2, 3) if keep_3d else (2,)):
        raise ValueError(f"{what} must be 2D{' or 3D' if keep_3d else ' (or a 3D stack)'}, "
                         f"got shape {arr.shape}")
    check_finite_nonzero(arr, what)
    raw_shape = list(arr.shape)
    base, sigma = baseline_and_noise(arr)
    arr = arr - base
    above = arr > FLOOR_SIGMAS * sigma if sigma > 0 else arr > 0
    if sigma > 0:
        above = _significant(above, arr)
    arr = np.where(above, arr, 0.0)
    check_finite_nonzero(arr, f"{what} after removing its baseline ({base:.4g}) and noise")
    total = arr.sum()
    geometric = (np.array(arr.shape) - 1) / 2
    canvas, centroid = _centre_on_centroid(arr)

    # the smallest centred odd box holding all that is left above the floor (measured
    # before the sub-pixel shift, whose spline spreads tiny values over the whole canvas)
    centre = np.array(canvas.shape) // 2
    support = np.argwhere(arr > 0)
    halves = np.ceil(np.abs(support - centroid).max(axis=0) - 1e-6).astype(int)
    halves = np.minimum(halves, centre)
    if max_size is not None:
        halves = np.minimum(halves, (max_size - 1) // 2)
    crop = canvas[tuple(slice(c - h, c + h + 1) for c, h in zip(centre, halves))]
    check_finite_nonzero(crop, f"{what} after centring and cropping")
    kept = float(crop.sum() / total)
    kernel = (crop / crop.sum()).astype(np.float32)
    diag = PSFDiagnostics(measured_shape=raw_shape, kernel_shape=list(kernel.shape), baseline=base,
                          noise_sigma=sigma,
                          centroid_offset_px=[round(float(v), 3) for v in centroid - geometric],
                          energy_kept=round(min(kept, 1.0), 5),
                          fwhm_px=fwhm_along_axes(kernel), in_focus_plane=plane)
    offset = float(np.max(np.abs(centroid - geometric)))
    if offset > OFF_CENTRE_WARN_PX:
        warnings.warn(f"The {what}'s centre of mass is {_vec(centroid - geometric)} px from "
                      "the centre of its image: it was centred on it, so restored objects "
                      "stay in place.", PSFWarning, stacklevel=3)
    if kept < ENERGY_WARN:
        warnings.warn(f"The {what} was cropped to {'×'.join(map(str, kernel.shape))} px and "
                      f"keeps only {100 * kept:.1f} % of its energy: use a smaller PSF image "
                      "or a larger image.", PSFWarning, stacklevel=3)
    return kernel, diag


def _vec(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:+.2f}" for x in v) + ")"

"""Point-spread functions: measured (array or file), Gaussian and widefield Airy.

Every function returns a float32 numpy array with odd side lengths, its peak at the
centre pixel, non-negative, summing to 1. PSF problems raise ``ValueError`` with a message
that says what to do. Measured PSFs (file, array, napari layer, bead average) all go
through :func:`pkl_dg.physics.psf_cleaning.clean_psf` and :func:`resample_to_grid`. These
are functions of arrays and numbers: the PSF of a run, from its settings, is built by
:func:`pkl_dg.psf_source.psf_from_settings`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import special

from pkl_dg.physics.psf_cleaning import (clean_psf, fwhm_along_axes,  # noqa: F401
                                         in_focus_plane)

__all__ = ["airy_psf", "check_psf_fits", "crop_to_fit", "fwhm_of", "fwhm_to_sigma",
           "gaussian_psf", "gaussian_psf_3d", "in_focus_plane", "kernel_description", "load_psf",
           "prepare_psf", "resample_psf", "resample_to_grid"]

# Born–Wolf in-focus intensity: first zeros of J1(v) (v = 2π·NA·r/λ)
_J1_ZEROS = (3.8317, 7.0156, 10.1735, 13.3237, 16.4706, 19.6159)


def prepare_psf(psf: np.ndarray, *, subtract_floor: bool = True,
                max_size: int | None = None, keep_3d: bool = False) -> np.ndarray:
    """A measured PSF image as a normalised, centred, odd-sized kernel.

    The one cleaning pipeline of :func:`pkl_dg.physics.psf_cleaning.clean_psf` (baseline,
    noise floor, sub-pixel centring, energy-keeping crop, normalisation), whatever the PSF's
    source; its diagnostics are dropped here (use :func:`clean_psf` to get them).
    ``subtract_floor`` is accepted for compatibility and ignored: every measured PSF is
    cleaned the same way, and a computed (noise-free) one is left as it is.
    """
    return clean_psf(psf, keep_3d=keep_3d, max_size=max_size)[0]


def gaussian_psf_3d(sigma: float, sigma_z: float, sigma_y: float | None = None) -> np.ndarray:
    """A 3D Gaussian PSF (Z, Y, X): the 2D pixel-integrated Gaussian times one along Z."""
    if not (math.isfinite(sigma_z) and sigma_z > 0):
        raise ValueError(f"a 3D Gaussian PSF needs σ Z > 0 (planes), got {sigma_z}")
    lateral = gaussian_psf(sigma, sigma_y).astype(np.float64)
    k = _gaussian_1d(sigma_z)[:, None, None] * lateral[None]
    return (k / k.sum()).astype(np.float32)


def _gaussian_1d(s: float, n: int | None = None) -> np.ndarray:
    """Gaussian integrated exactly over each pixel; ``n`` samples or 2·ceil(4σ)+1."""
    half = (n - 1) // 2 if n else max(1, math.ceil(4 * s))
    edges = (np.arange(-half, half + 2) - 0.5) / (math.sqrt(2) * s)
    return np.diff(special.erf(edges)) / 2


def gaussian_psf(sigma: float, sigma_y: float | None = None, size: int | None = None) -> np.ndarray:
    """Pixel-integrated Gaussian PSF; ``sigma`` along X, ``sigma_y`` along Y (pixels).

    The side is ``2·ceil(4σ)+1`` unless ``size`` (odd) is given. Use
    :func:`fwhm_to_sigma` to start from a FWHM.
    """
    sy = sigma if not sigma_y else sigma_y
    for name, s in (("sigma", sigma), ("sigma_y", sy)):
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"Gaussian PSF {name} must be a positive number of pixels, got {s}")

    if size is not None and (size < 1 or size % 2 == 0):
        raise ValueError(f"PSF size must be a positive odd number, got {size}")
    k = np.outer(_gaussian_1d(sy, size), _gaussian_1d(sigma, size))
    return (k / k.sum()).astype(np.float32)


def fwhm_to_sigma(fwhm: float) -> float:
    return fwhm / (2 * math.sqrt(2 * math.log(2)))


def airy_psf(na: float, wavelength_nm: float, pixel_size_nm: float, *, rings: int = 4,
             oversample: int = 9) -> np.ndarray:
    """Widefield in-focus Born–Wolf (Airy) PSF, integrated over each pixel.

    I(r) ∝ (2·J1(v)/v)², v = 2π·NA·r/λ; its FWHM is 0.514·λ/NA. The kernel reaches the
    ``rings``-th dark ring; each pixel averages ``oversample``² sub-samples.
    """
    if not (0 < na <= 1.7):
        raise ValueError(f"numerical aperture must be in (0, 1.7], got {na}")
    if not (wavelength_nm > 0 and pixel_size_nm > 0):
        raise ValueError("wavelength and pixel size must be positive (nm)")
    rings = max(1, min(rings, len(_J1_ZEROS)))
    radius_nm = _J1_ZEROS[rings - 1] * wavelength_nm / (2 * math.pi * na)
    half = max(1, math.ceil(radius_nm / pixel_size_nm))
    n = 2 * half + 1
    sub = (np.arange(n * oversample) + 0.5) / oversample - n / 2  # pixel units, centre 0
    yy, xx = np.meshgrid(sub, sub, indexing="ij")
    v = 2 * math.pi * na * np.hypot(yy, xx) * pixel_size_nm / wavelength_nm
    with np.errstate(invalid="ignore", divide="ignore"):
        amp = np.where(v < 1e-9, 1.0, 2 * special.j1(v) / v)
    fine = amp ** 2
    k = fine.reshape(n, oversample, n, oversample).mean(axis=(1, 3))
    return (k / k.sum()).astype(np.float32)


def _resample_axis(arr: np.ndarray, axis: int, zoom: float) -> np.ndarray:
    """Resample one axis by ``zoom`` (output px per input px), keeping the sum.

    Down-sampling (zoom < 1) integrates: each output pixel is the integral of the input,
    taken as constant over each of its pixels, over the output pixel's extent (a PSF pixel
    collects all the light that falls on it). Up-sampling interpolates linearly. The centre
    stays at the centre; the output side is odd.
    """
    n_in = arr.shape[axis]
    n_out = 2 * math.ceil(n_in * zoom / 2) + 1
    if zoom >= 1:
        coords = (n_in - 1) / 2 + (np.arange(n_out) - (n_out - 1) / 2) / zoom
        moved = np.moveaxis(arr, axis, 0)
        out = np.stack([np.interp(coords, np.arange(n_in), col, left=0.0, right=0.0)
                        for col in moved.reshape(n_in, -1).T], axis=1)
        return np.moveaxis(out.reshape((n_out,) + moved.shape[1:]), 0, axis) / zoom
    edges = n_in / 2 + (np.arange(n_out + 1) - n_out / 2) / zoom
    cum = np.concatenate([np.zeros((1,) + np.moveaxis(arr, axis, 0).shape[1:]),
                          np.cumsum(np.moveaxis(arr, axis, 0), axis=0)])
    at = np.clip(edges, 0, n_in)
    lo = np.clip(np.floor(at).astype(int), 0, n_in - 1)
    frac = (at - lo).reshape((-1,) + (1,) * (cum.ndim - 1))
    c = cum[lo] + frac * (cum[lo + 1] - cum[lo])
    return np.moveaxis(np.diff(c, axis=0), 0, axis)


def resample_psf(psf: np.ndarray, from_pixel_nm: float, to_pixel_nm: float, *,
                 from_z_nm: float = 0.0, to_z_nm: float = 0.0) -> np.ndarray:
    """Resample a PSF onto the image's grid (renormalised, re-centred, odd sides).

    Laterally (the last two axes) from ``from_pixel_nm`` to ``to_pixel_nm``; along Z (a 3D
    PSF's first axis) from ``from_z_nm`` to ``to_z_nm`` when both are > 0 (else Z is left
    as it is). Coarser grids integrate the PSF over each new pixel, finer ones interpolate
    linearly (see :func:`_resample_axis`).
    """
    if from_pixel_nm <= 0 or to_pixel_nm <= 0:
        raise ValueError("pixel sizes must be positive to resample a PSF")
    arr = np.asarray(psf, dtype=np.float64)
    zoom = [from_pixel_nm / to_pixel_nm] * 2
    if arr.ndim == 3:
        zoom.insert(0, from_z_nm / to_z_nm if from_z_nm > 0 and to_z_nm > 0 else 1.0)
    for axis, z in enumerate(zoom):
        if abs(z - 1) > 1e-6:
            arr = _resample_axis(arr, axis, z)
    if not np.any(arr > 0):
        raise ValueError("PSF becomes smaller than one pixel after resampling: "
                         "check the PSF and image pixel sizes")
    return prepare_psf(np.clip(arr, 0, None), keep_3d=arr.ndim == 3)


def load_psf(path: str | Path) -> np.ndarray:
    """Read a PSF image from a TIFF or ``.npy`` file (not yet normalised)."""
    from pkl_dg.imageio import read_image

    return read_image(path, what="PSF file")


def check_psf_fits(psf_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> None:
    """Refuse a PSF larger than the image (compared on the PSF's axes)."""
    d = len(psf_shape)
    if len(image_shape) < d:
        raise ValueError(f"a {d}D PSF needs an image with at least {d} axes, got "
                         f"shape {tuple(image_shape)}")
    img = tuple(image_shape[-d:])
    if any(p > n for p, n in zip(psf_shape, img)):
        raise ValueError(f"PSF ({'×'.join(map(str, psf_shape))}) is larger than the image "
                         f"({'×'.join(map(str, img))}): pick a larger image or a narrower PSF")


#: a measured PSF larger than the image is cropped to fit when that removes at most this
#: share of its light (:func:`crop_to_fit`), else refused
CROP_MAX_LOSS = 0.25
#: a cropped PSF's centroid is brought back to its centre pixel to within this (px)
RECENTRE_TOLERANCE_PX = 0.02


def crop_to_fit(psf: np.ndarray, image_shape: tuple[int, ...]
                ) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Crop a centred PSF that is larger than the image to fit it, renormalised.

    A measured PSF is often stored at the image's own size (DeconvolutionLab2's and
    flowdec's examples, a bead stack): centred on its peak by the cleaning it grows by a
    pixel or plane, and the convolution's reflect padding needs the PSF no larger than the
    image. Each side larger than the image's is cut around the centre to the largest odd
    size that fits, and the crop's centroid is shifted back to its centre pixel (sub-pixel,
    cubic spline), so restored objects stay in place.

    Parameters
    ----------
    psf
        The cleaned kernel, odd sides, centre at the centre pixel, sum 1; (Y, X) or (Z, Y, X).
    image_shape
        The image (its last ``psf.ndim`` axes are compared).

    Returns
    -------
    (kernel, cropped)
        The kernel unchanged and None when it fits; else the crop (float32, sum 1) and
        ``{"from": shape, "to": shape, "light_removed": share, "recentred_px": shift per
        axis}`` for the metadata.

    Raises
    ------
    ValueError
        When the crop would remove more than :data:`CROP_MAX_LOSS` of the PSF's light (its
        width is then a large part of the image: pick a larger image or a smaller PSF).
    """
    d = psf.ndim
    img = tuple(image_shape[-d:])
    if len(image_shape) < d or all(p <= n for p, n in zip(psf.shape, img)):
        return psf, None
    box = []
    for p, n in zip(psf.shape, img):
        m = p if p <= n else n - (1 - n % 2)
        box.append(slice((p - m) // 2, (p - m) // 2 + m))
    crop = np.asarray(psf[tuple(box)], dtype=np.float64)
    # a PSF with more light on one side of its focus (most widefield ones along Z) has its
    # centroid off the centre once cut, and objects would move by that much (measured:
    # 0.86 plane with RedLionfish's 61-plane PSF cut to 29 planes): centre it again
    from scipy import ndimage

    centre = (np.array(crop.shape) - 1) / 2
    offset = np.zeros(d)
    for _ in range(3):
        off = np.array(ndimage.center_of_mass(crop)) - centre
        if np.max(np.abs(off)) <= RECENTRE_TOLERANCE_PX:
            break
        crop = np.clip(ndimage.shift(crop, -off, order=3, mode="constant", cval=0.0), 0, None)
        offset += off
    total = float(np.asarray(psf, dtype=np.float64).sum())
    loss = 1.0 - float(crop.sum()) / total if total > 0 else 1.0
    if loss > CROP_MAX_LOSS:
        raise ValueError(f"PSF ({'×'.join(map(str, psf.shape))}) is larger than the image "
                         f"({'×'.join(map(str, img))}), and cropping it to fit would remove "
                         f"{100 * loss:.0f} % of its light: pick a larger image (more planes "
                         "in 3D) or a narrower PSF")
    info = {"from": list(psf.shape), "to": list(crop.shape), "light_removed": round(loss, 5),
            "recentred_px": [round(float(v), 3) for v in offset]}
    return (crop / crop.sum()).astype(np.float32), info


def resample_to_grid(psf: np.ndarray, pixel_size_nm: float, z_step_nm: float = 0.0, *,
                     psf_pixel_size_nm: float = 0.0, psf_z_step_nm: float = 0.0
                     ) -> tuple[np.ndarray, dict | None]:
    """A cleaned measured PSF resampled onto the image's grid, and what was done.

    Parameters
    ----------
    psf : ndarray, (Y, X) or (Z, Y, X)
        A cleaned kernel (:func:`~pkl_dg.physics.psf_cleaning.clean_psf`).
    pixel_size_nm, z_step_nm : float
        The image's pixel size and (3D) plane spacing, nm; ``z_step_nm`` 0 = unknown.
    psf_pixel_size_nm, psf_z_step_nm : float
        The PSF's own pixel size and plane spacing, nm; 0 = the image's (not resampled).
        ``psf_z_step_nm`` is only read for a 3D ``psf``.

    Returns
    -------
    (kernel, resampled)
        ``kernel`` float32, normalised; ``resampled`` None when neither spacing was given
        or both equal the image's, else ``from_shape``, ``to_shape``, ``from_spacing_nm``
        and ``to_spacing_nm`` (one value per axis of the kernel; an unknown Z step is None).

    Raises
    ------
    ValueError
        The PSF's Z step is given but not the image's.
    """
    three_d = psf.ndim == 3
    axial = z_step_nm or None
    psf_z = psf_z_step_nm if three_d else 0.0
    if psf_z > 0 and not axial:
        raise ValueError(f"the PSF's Z step is set ({psf_z:g} nm) but not the image's: set "
                         "the image Z step so the PSF can be resampled to it")
    lateral = pixel_size_nm
    same = [abs(a - b) <= 1e-6 * b for a, b in ((psf_pixel_size_nm, lateral), (psf_z, axial))
            if a > 0]
    if all(same):  # neither spacing given, or both the image's own: nothing to resample
        return psf, None
    out = resample_psf(psf, psf_pixel_size_nm or lateral, lateral, from_z_nm=psf_z,
                       to_z_nm=axial or 0.0)
    return out, {"from_shape": list(psf.shape), "to_shape": list(out.shape),
                 "from_spacing_nm": ([psf_z or axial] if three_d else [])
                 + [psf_pixel_size_nm or lateral] * 2,
                 "to_spacing_nm": ([axial] if three_d else []) + [lateral] * 2}


def kernel_description(kernel: np.ndarray, spacing_nm: list[float | None]) -> dict:
    """Shape, grid and width of a kernel, as JSON-able numbers.

    Parameters
    ----------
    kernel : ndarray, (Y, X) or (Z, Y, X)
    spacing_nm : list of float or None
        The grid's spacing along each axis of ``kernel``, nm (None where unknown).

    Returns
    -------
    dict
        ``kernel_shape``; ``spacing_nm``; ``fwhm_px``, the FWHM along each axis through the
        centre (px; None where it does not fall to half maximum); ``fwhm_nm`` the same in
        nm (None where either is unknown).
    """
    fw = fwhm_along_axes(kernel)
    return {"kernel_shape": list(kernel.shape), "spacing_nm": list(spacing_nm),
            "fwhm_px": fw,
            "fwhm_nm": [None if f is None or d is None else round(f * d, 2)
                        for f, d in zip(fw, spacing_nm)]}


def fwhm_of(profile: np.ndarray) -> float:
    """FWHM (in samples) of a 1D peak profile by linear interpolation at half maximum."""
    p = np.asarray(profile, dtype=np.float64)
    i = int(np.argmax(p))
    half = p[i] / 2
    left = i
    while left > 0 and p[left] > half:
        left -= 1
    right = i
    while right < len(p) - 1 and p[right] > half:
        right += 1
    if p[left] > half or p[right] > half:
        raise ValueError("profile does not fall to half maximum on both sides")
    xl = left + (half - p[left]) / (p[left + 1] - p[left])
    xr = right - 1 + (p[right - 1] - half) / (p[right - 1] - p[right])
    return float(xr - xl)

"""Point-spread functions: measured (array or file), Gaussian and widefield Airy.

Every function returns a float32 numpy array with odd side lengths, its peak at the
centre pixel, non-negative, summing to 1. PSF problems raise ``ValueError`` with a message
that says what to do.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage, special

# Born–Wolf in-focus intensity: first zeros of J1(v) (v = 2π·NA·r/λ)
_J1_ZEROS = (3.8317, 7.0156, 10.1735, 13.3237, 16.4706, 19.6159)


def _check_finite_nonzero(psf: np.ndarray, what: str = "PSF") -> None:
    if psf.size == 0:
        raise ValueError(f"{what} is empty: supply a PSF image with at least one pixel")
    if not np.all(np.isfinite(psf)):
        raise ValueError(f"{what} contains NaN or infinite values: fix or re-measure the PSF")
    if not np.any(psf > 0):
        raise ValueError(f"{what} has no positive values (all zero or negative): "
                         "check that the right image was chosen as PSF")


def in_focus_plane(psf: np.ndarray) -> np.ndarray:
    """The Z-plane of a 3D PSF that carries the most energy (sum of positive values)."""
    if psf.ndim != 3:
        raise ValueError(f"expected a 3D PSF, got shape {psf.shape}")
    energy = np.clip(psf, 0, None).reshape(psf.shape[0], -1).sum(axis=1)
    return psf[int(np.argmax(energy))]


def prepare_psf(psf: np.ndarray, *, subtract_floor: bool = False,
                max_size: int | None = None, keep_3d: bool = False) -> np.ndarray:
    """Turn a measured PSF image into a normalised, centred, odd-sized kernel.

    Steps: a 3D PSF gives its in-focus plane (unless ``keep_3d``); negative values are
    clipped; optionally a background floor (the median of the outermost pixels) is
    subtracted and clipped; the centroid is moved to the centre pixel (sub-pixel shift,
    linear interpolation); crop to the largest odd box around the centre (sides at most
    ``max_size``); normalised to sum 1.
    """
    arr = np.asarray(psf, dtype=np.float64)
    if arr.ndim == 3 and not keep_3d:
        arr = in_focus_plane(arr)
    if arr.ndim not in ((2, 3) if keep_3d else (2,)):
        raise ValueError(f"PSF must be 2D{' or 3D' if keep_3d else ' (or a 3D stack)'}, "
                         f"got shape {arr.shape}")
    _check_finite_nonzero(arr)
    arr = np.clip(arr, 0, None)
    if subtract_floor and min(arr.shape) >= 3:
        inner = tuple(slice(1, -1) for _ in arr.shape)
        border = np.ones(arr.shape, dtype=bool)
        border[inner] = False
        arr = np.clip(arr - np.median(arr[border]), 0, None)
        _check_finite_nonzero(arr, "PSF after background-floor subtraction")

    # centre on the centroid: integer part by cropping, fractional part by interpolation
    centre = ndimage.center_of_mass(arr)
    box, frac = [], []
    for c, n in zip(centre, arr.shape):
        i = int(round(c))
        half = min(i, n - 1 - i)
        if max_size is not None:
            half = min(half, (max_size - 1) // 2)
        box.append(slice(i - half, i + half + 1))
        frac.append(c - i)
    crop = arr[tuple(box)]
    if any(abs(f) > 1e-6 for f in frac):
        crop = ndimage.shift(crop, [-f for f in frac], order=1, mode="constant", cval=0.0)
        crop = np.clip(crop, 0, None)
    _check_finite_nonzero(crop, "PSF after centring and cropping")
    return (crop / crop.sum()).astype(np.float32)


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


def resample_psf(psf: np.ndarray, from_pixel_nm: float, to_pixel_nm: float) -> np.ndarray:
    """Resample a PSF sampled at ``from_pixel_nm`` onto a ``to_pixel_nm`` grid (renormalised)."""
    if from_pixel_nm <= 0 or to_pixel_nm <= 0:
        raise ValueError("pixel sizes must be positive to resample a PSF")
    zoom = from_pixel_nm / to_pixel_nm
    if abs(zoom - 1) < 1e-6:
        return prepare_psf(psf)
    out = ndimage.zoom(np.asarray(psf, dtype=np.float64), zoom, order=1)
    if min(out.shape) < 1:
        raise ValueError("PSF becomes smaller than one pixel after resampling: "
                         "check the PSF and image pixel sizes")
    return prepare_psf(out)


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
                         f"({'×'.join(map(str, img))}): crop the PSF or pick a larger image")


def _build_psf_3d(settings, psf: np.ndarray | None) -> np.ndarray:
    if psf is None and settings.psf_kind == "file":
        if not settings.psf_path:
            raise ValueError("PSF model is 'file' but no PSF file was given")
        psf = load_psf(settings.psf_path)
    if psf is not None:
        if np.ndim(psf) != 3:
            raise ValueError(f"3D deconvolution needs a 3D PSF (Z, Y, X); got shape "
                             f"{np.shape(psf)}: pick a PSF stack or use 2D mode")
        return prepare_psf(psf, subtract_floor=settings.psf_kind == "file", keep_3d=True)
    if settings.psf_kind == "gaussian":
        return gaussian_psf_3d(settings.psf_sigma, settings.psf_sigma_z,
                               settings.psf_sigma_y or None)
    raise ValueError(f"3D deconvolution needs a 3D PSF: use a Gaussian PSF with σ Z > 0 or "
                     f"a measured PSF stack (PSF model {settings.psf_kind!r} is 2D only)")


def build_psf(settings, image_shape: tuple[int, ...] | None = None,
              psf: np.ndarray | None = None) -> np.ndarray:
    """The PSF described by a :class:`~pkl_dg.settings.RestoreSettings`.

    ``psf`` (an array, e.g. from a napari layer) takes precedence over the settings' model.
    In 3D mode the PSF is 3D (ZYX). When ``image_shape`` is given the PSF is checked to fit
    inside it (its last two or three axes).
    """
    if settings.mode == "3d":
        out = _build_psf_3d(settings, psf)
        if image_shape is not None:
            check_psf_fits(out.shape, image_shape)
        return out
    if psf is not None:
        out = prepare_psf(psf)
        if settings.psf_pixel_size_nm > 0:
            out = resample_psf(out, settings.psf_pixel_size_nm, settings.pixel_size_nm)
    elif settings.psf_kind == "gaussian":
        out = gaussian_psf(settings.psf_sigma, settings.psf_sigma_y or None)
    elif settings.psf_kind == "airy":
        out = airy_psf(settings.na, settings.wavelength_nm, settings.pixel_size_nm)
    elif settings.psf_kind == "file":
        if not settings.psf_path:
            raise ValueError("PSF model is 'file' but no PSF file was given")
        out = prepare_psf(load_psf(settings.psf_path), subtract_floor=True)
        if settings.psf_pixel_size_nm > 0:
            out = resample_psf(out, settings.psf_pixel_size_nm, settings.pixel_size_nm)
    elif settings.psf_kind == "array":
        raise ValueError("PSF model is 'array' but no PSF array was supplied")
    else:  # settings validation makes this unreachable
        raise ValueError(f"unknown PSF model {settings.psf_kind!r}")
    if image_shape is not None:
        check_psf_fits(out.shape, image_shape)
    return out


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

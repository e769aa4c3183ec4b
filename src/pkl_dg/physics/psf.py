"""Point-spread functions: measured (array or file), Gaussian and widefield Airy.

Every function returns a float32 numpy array with odd side lengths, its peak at the
centre pixel, non-negative, summing to 1. PSF problems raise ``ValueError`` with a message
that says what to do. Measured PSFs (file, array, napari layer, bead average) all go
through :func:`pkl_dg.physics.psf_cleaning.clean_psf`; :func:`build_psf_info` returns the
PSF of a run with what was done to it (cleaning diagnostics, resampling, spacing).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage, special

from pkl_dg.physics.psf_cleaning import (clean_psf, fwhm_along_axes,  # noqa: F401
                                         in_focus_plane)

__all__ = ["airy_psf", "build_psf", "build_psf_info", "check_psf_fits", "fwhm_of",
           "fwhm_to_sigma", "gaussian_psf", "gaussian_psf_3d", "in_focus_plane", "load_psf",
           "prepare_psf", "resample_psf"]

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
                         f"({'×'.join(map(str, img))}): crop the PSF or pick a larger image")


def build_psf(settings, image_shape: tuple[int, ...] | None = None,
              psf: np.ndarray | None = None) -> np.ndarray:
    """The PSF described by a :class:`~pkl_dg.settings.RestoreSettings` (see
    :func:`build_psf_info`, which also says what was done to it)."""
    return build_psf_info(settings, image_shape, psf)[0]


def build_psf_info(settings, image_shape: tuple[int, ...] | None = None,
                   psf: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """The PSF of a run and a description of the PSF actually used.

    ``psf`` (an array, e.g. from a napari layer or a bead average) takes precedence over the
    settings' model. In 3D mode the PSF is 3D (ZYX). A measured PSF (array or file) is
    cleaned (:func:`~pkl_dg.physics.psf_cleaning.clean_psf`) and, in either mode, resampled
    from ``psf_pixel_size_nm`` to ``pixel_size_nm`` laterally and (3D) from
    ``psf_z_step_nm`` to ``z_step_nm`` axially. When ``image_shape`` is given the PSF is
    checked to fit inside it (its last two or three axes).

    Returns
    -------
    (psf, info)
        ``info`` (JSON-able): ``source``, ``kernel_shape``, ``spacing_nm`` per axis (the
        image's grid: its pixel size and, in 3D, its Z step; None where unknown),
        ``resampled`` (from/to spacings) when it was, ``cleaning`` (centroid offset, energy
        kept, baseline, noise) for measured PSFs, ``optics`` for the vectorial PSF,
        ``fwhm_px``/``fwhm_nm``, and ``not_applied``: PSF settings that had no effect on
        this PSF.

    Raises
    ------
    ValueError
        Missing file or array, a 2D PSF in 3D mode, axial resampling without the image's Z
        step, a PSF larger than the image.
    """
    s = settings
    three_d = s.mode == "3d"
    info: dict = {}
    measured = psf is not None or s.psf_kind == "file"
    if psf is None and s.psf_kind == "file":
        if not s.psf_path:
            raise ValueError("PSF model is 'file' but no PSF file was given")
        psf = load_psf(s.psf_path)
        info["source"] = f"file {s.psf_path}"
    elif psf is not None:
        info["source"] = "array"
    if measured:
        if three_d and np.ndim(psf) != 3:
            raise ValueError(f"3D deconvolution needs a 3D PSF (Z, Y, X); got shape "
                             f"{np.shape(psf)}: pick a PSF stack or use 2D mode")
        out, diag = clean_psf(psf, keep_3d=three_d)
        info["cleaning"] = diag.to_dict()
        out, lateral, axial = _resample_measured(out, s, three_d, info)
    else:
        out, lateral, axial = _computed_psf(s, three_d, info, image_shape)
    info["kernel_shape"] = list(out.shape)
    info["spacing_nm"] = ([axial] if three_d else []) + [lateral, lateral]
    fw = fwhm_along_axes(out)
    info["fwhm_px"] = fw
    info["fwhm_nm"] = [None if f is None or d is None else round(f * d, 2)
                       for f, d in zip(fw, info["spacing_nm"])]
    unused = [n for n in ("psf_pixel_size_nm", "psf_z_step_nm")
              if getattr(s, n, 0) > 0 and n not in info.get("applied", ())]
    info.pop("applied", None)
    if unused:
        info["not_applied"] = unused
    if image_shape is not None:
        check_psf_fits(out.shape, image_shape)
    return out, info


def _resample_measured(out: np.ndarray, s, three_d: bool, info: dict):
    """Resample a cleaned measured PSF to the image's spacing (lateral, and axial in 3D)."""
    lateral = s.pixel_size_nm
    axial = getattr(s, "z_step_nm", 0.0) or None
    psf_xy = s.psf_pixel_size_nm
    psf_z = getattr(s, "psf_z_step_nm", 0.0) if three_d else 0.0
    if psf_z > 0 and not axial:
        raise ValueError(f"the PSF's Z step is set ({psf_z:g} nm) but not the image's: set "
                         "the image Z step so the PSF can be resampled to it")
    applied = []
    if psf_xy > 0:
        applied.append("psf_pixel_size_nm")
    if psf_z > 0:
        applied.append("psf_z_step_nm")
    if applied:
        before = list(out.shape)
        out = resample_psf(out, psf_xy or lateral, lateral, from_z_nm=psf_z,
                           to_z_nm=axial or 0.0)
        info["resampled"] = {"from_shape": before, "to_shape": list(out.shape),
                             "from_spacing_nm": ([psf_z or axial] if three_d else [])
                             + [psf_xy or lateral] * 2,
                             "to_spacing_nm": ([axial] if three_d else []) + [lateral] * 2}
    info["applied"] = applied
    return out, lateral, axial


def _computed_psf(s, three_d: bool, info: dict, image_shape: tuple[int, ...] | None = None):
    """A PSF from the settings' model (Gaussian, Airy, vectorial); nothing to clean or
    resample."""
    if s.psf_kind == "array":
        raise ValueError("PSF model is 'array' but no PSF array was supplied")
    if s.psf_kind == "vectorial":
        return _vectorial(s, three_d, info, image_shape)
    if three_d:
        if s.psf_kind == "gaussian":
            info["source"] = "gaussian"
            out = gaussian_psf_3d(s.psf_sigma, s.psf_sigma_z, s.psf_sigma_y or None)
            return out, s.pixel_size_nm, getattr(s, "z_step_nm", 0.0) or None
        raise ValueError(f"3D deconvolution needs a 3D PSF: use a Gaussian PSF with σ Z > 0 "
                         f"or a measured PSF stack (PSF model {s.psf_kind!r} is 2D only)")
    if s.psf_kind == "gaussian":
        info["source"] = "gaussian"
        return gaussian_psf(s.psf_sigma, s.psf_sigma_y or None), s.pixel_size_nm, None
    if s.psf_kind == "airy":
        info["source"] = "airy"
        return airy_psf(s.na, s.wavelength_nm, s.pixel_size_nm), s.pixel_size_nm, None
    raise ValueError(f"unknown PSF model {s.psf_kind!r}")  # settings validation prevents it


def _vectorial(s, three_d: bool, info: dict, image_shape: tuple[int, ...] | None):
    """The widefield vectorial PSF of the settings' optics (see :mod:`.optics_psf`)."""
    from pkl_dg.physics.optics_psf import auto_planes, widefield_psf

    z_step = getattr(s, "z_step_nm", 0.0)
    side = min(image_shape[-2:]) if image_shape is not None else None
    planes = 1
    if three_d:
        if not z_step > 0:
            raise ValueError("a 3D PSF from the optics needs the image's Z step: set Z step "
                             "(nm)")
        depth = image_shape[-3] if image_shape is not None and len(image_shape) >= 3 else None
        planes = auto_planes(s.na, s.wavelength_nm, z_step, s.immersion_ri, depth)
    out = widefield_psf(s.na, s.wavelength_nm, s.pixel_size_nm, z_step_nm=z_step,
                        planes=planes, immersion_ri=s.immersion_ri, sample_ri=s.sample_ri,
                        depth_nm=s.psf_depth_nm, max_side=side)
    info["source"] = "vectorial"
    info["optics"] = {"model": "vectorial (Aguet 2009) with Gibson–Lanni aberrations, "
                      "psfmodels", "na": s.na, "wavelength_nm": s.wavelength_nm,
                      "immersion_ri": s.immersion_ri, "sample_ri": s.sample_ri,
                      "depth_nm": s.psf_depth_nm}
    return (out if three_d else out[0]), s.pixel_size_nm, (z_step if three_d else None)


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

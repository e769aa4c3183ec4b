"""What a restoration checks and derives from its input before any deconvolution.

Shape and value checks (single-channel YX planes or ZYX volumes, finite real numbers), the
background estimate, and the photon calibration of a run: the user's camera values or an
estimate from the image itself (:mod:`pkl_dg.calibration`), with the check that the data
then look like photon counts.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import torch

from pkl_dg.axes import check_unlabelled_layout
from pkl_dg.calibration import Calibration, estimate_calibration
from pkl_dg.guidance.discrepancy import deviance_ratio
from pkl_dg.physics import ForwardModel, PSFConvolution
from pkl_dg.physics.psf_cleaning import PSFWarning
from pkl_dg.missing import calibration_mask, fill_missing, require_measured
from pkl_dg.quantiles import quantile
from pkl_dg.saturation import detect_saturation
from pkl_dg.settings import RestoreSettings

MIN_SIDE = 8

#: On Poisson photon counts a 20-iteration RL fit leaves a deviance of 0.90–1.05 × its
#: expectation (procedural phantoms, 10–1000 photons). Far below that, the data are less
#: noisy than photon counts (normalised or ADU data): the noise-level stop cannot work.
CALIBRATION_MIN_RATIO = 0.8


class CalibrationWarning(UserWarning):
    """The data do not look like photon counts; a Poisson-calibrated feature was adapted."""


def check_image_shape(shape: tuple[int, ...], mode: str = "2d", labelled: bool = False
                      ) -> None:
    """Refuse shapes that are not single-channel YX images or stacks of them; unless the
    axes are known (``labelled``), also layouts whose channel axis would be deconvolved
    (:func:`pkl_dg.axes.check_unlabelled_layout`)."""
    if not labelled:
        check_unlabelled_layout(shape, mode, MIN_SIDE)
    need = 3 if mode == "3d" else 2
    if len(shape) < need:
        what = "a Z-stack (Z, Y, X)" if mode == "3d" else "at least 2D (Y, X)"
        raise ValueError(f"image must be {what}, got shape {tuple(shape)}")
    if min(shape[-2:]) < MIN_SIDE:
        raise ValueError(f"image {shape[-2]}×{shape[-1]} is too small: both sides must be "
                         f"at least {MIN_SIDE} pixels")


class EmptyPlaneWarning(UserWarning):
    """Planes or volumes of a stack hold no signal (every value 0): they are written as
    zeros, not restored."""


def validate_block(block: Any, dtype: Any, empty_ok: bool = False,
                   missing_ok: bool = False) -> np.ndarray:
    """Check one plane or volume and return a float32 copy of it (``missing_ok``: NaN and
    ±inf, pixels without a measurement, kept for :func:`pkl_dg.missing.fill_missing`).

    Raises
    ------
    ValueError
        Not real numbers; NaN or infinite values, unless ``missing_ok``; every value 0,
        unless ``empty_ok`` (one plane of a stack, which the caller passes through as zeros).
    """
    if np.dtype(dtype) == bool or np.issubdtype(dtype, np.complexfloating) or \
            not np.issubdtype(dtype, np.number):
        raise ValueError(f"image has dtype {np.dtype(dtype)}: a fluorescence image must be "
                         "real numbers (integer or float)")
    out = np.array(block, dtype=np.float32, copy=True)
    finite = np.isfinite(out)
    if not missing_ok and not np.all(finite):
        raise ValueError(
            f"image contains {out.size - int(finite.sum())} NaN or infinite value(s) (e.g. the "
            "border of a registered or stitched image): this needs a value at every pixel; "
            "crop the image to its measured region, or replace them (e.g. with the "
            "background level). A restoration (restore, the napari widget) leaves them out "
            "of the fit by itself")
    if not empty_ok and not np.any(out != 0):
        raise ValueError("image is all zero: there is nothing to restore")
    return out


def validate_image(image: Any, missing_ok: bool = False) -> np.ndarray:
    """Check a single-channel 2D image; a float32 copy of it (see :func:`validate_block`)."""
    arr = np.asarray(image)
    check_image_shape(arr.shape)
    if arr.ndim != 2:
        raise ValueError(f"image must be 2D (Y, X), got shape {arr.shape}")
    return validate_block(arr, arr.dtype, missing_ok=missing_ok)


def check_call(image: Any, settings: Any, psf: Any) -> Any:
    """Check the argument kinds of :func:`~pkl_dg.restoration.restore_iter` (and of
    ``restore``); return ``image``, a torch tensor made a numpy array (detached, on the CPU;
    bfloat16 as float32) as every other array-like (numpy, dask, xarray, lists) is taken.

    Raises
    ------
    TypeError
        ``psf`` is a RestoreSettings (``restore(image, settings)``: restore's second
        positional argument is the PSF), or ``settings`` is neither one nor None.
    ValueError
        ``image`` is a numpy masked array with masked pixels: the mask would be dropped.
    """
    if isinstance(psf, RestoreSettings):
        raise TypeError("the PSF argument is a RestoreSettings: pass settings by keyword, "
                        "restore(image, settings=s) (restore's second positional argument "
                        "is the PSF; restore_iter(image, s) takes them second)")
    if settings is not None and not isinstance(settings, RestoreSettings):
        raise TypeError(f"settings must be a RestoreSettings or None, got "
                        f"{type(settings).__name__}: pass a PSF as psf=..., single settings "
                        "as keywords (restore_iter(image, steps=10))")
    if np.ma.isMaskedArray(image):  # np.asarray drops the mask: the data under it restored
        masked = int(np.ma.getmaskarray(image).sum())
        if masked:
            raise ValueError(
                f"image is a masked array with {masked} masked pixel(s): its mask would be "
                "dropped and the values under it restored as data. Pass a float copy with "
                "NaN there (image.astype(np.float32).filled(np.nan)): NaN pixels are left out "
                "of the data fit and are NaN in the result")
        image = np.ma.getdata(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = (image.float() if image.dtype == torch.bfloat16 else image).numpy()
    return image


def estimate_background(y: torch.Tensor, conv: PSFConvolution) -> float:
    """The 1st percentile of the PSF-smoothed data (photons), ≥ 0."""
    smooth = conv.A(y).reshape(-1)
    if smooth.numel() > 4_000_000:
        smooth = smooth[:: smooth.numel() // 4_000_000 + 1]
    return max(quantile(smooth, 0.01), 0.0)


def estimate_image_calibration(image: Any) -> Calibration:
    """The photon calibration a run with calibration 'auto' estimates from ``image``.

    Parameters
    ----------
    image : array_like
        (..., Y, X) in camera units, as the user's file holds it; the first YX plane of the
        middle of its leading axes is fitted (:func:`pkl_dg.calibration.estimate_calibration`),
        without its pixels clipped at the saturation level (they carry no noise).

    Raises
    ------
    ValueError
        No estimate: the noise does not grow with the signal, or the plane is unusable.
    """
    return _estimate_on(*_middle_plane(image))


def _middle_plane(image: Any) -> tuple[np.ndarray, np.dtype]:
    """The YX plane nearest the middle of the leading axes that is not all zero (a bead
    stack has empty planes) nor all missing, validated (NaN kept), and the dtype."""
    shape = tuple(np.shape(image))
    dtype = getattr(image, "dtype", np.float32)
    if len(shape) == 2:
        plane = validate_block(image, dtype, missing_ok=True)
        require_measured(np.isfinite(plane))  # an error, not "no estimate"
        return plane, dtype
    planes = int(np.prod(shape[:-2]))
    for k in sorted(range(planes), key=lambda k: abs(k - planes // 2)):
        plane = validate_block(image[np.unravel_index(k, shape[:-2])], dtype, empty_ok=True,
                               missing_ok=True)
        if np.any(np.isfinite(plane) & (plane != 0)):
            return plane, dtype
    raise ValueError("image is all zero: there is nothing to restore")


def _estimate_on(plane: np.ndarray, dtype: Any) -> Calibration:
    """The calibration estimate of one plane, its saturated and missing pixels left out."""
    plane, missing = fill_missing(plane)
    sat = detect_saturation(plane, dtype, None if missing is None else ~missing)
    out = [m for m in (calibration_mask(missing), sat.mask if sat.count else None) if m is not None]
    return estimate_calibration(plane, saturated=np.logical_or.reduce(out) if out else None)


def resolve_calibration(image: Any, s: RestoreSettings) -> Calibration:
    """The photon calibration of a run: the settings' values ('manual') or an estimate from
    the image ('auto': :func:`pkl_dg.calibration.estimate_calibration` on the YX plane
    nearest the middle of its leading axes that is not all zero).

    When the noise does not grow with the signal (noise-free synthetic or denoised data)
    no estimate exists: the data are then taken as photon counts (gain 1, offset 0, no read
    noise), a :class:`CalibrationWarning` says so and what to do, and the calibration's
    ``source`` is "assumed".
    """
    if s.calibration == "manual":
        return Calibration(gain=s.gain, offset=s.offset, read_noise=s.read_noise)
    plane, dtype = _middle_plane(image)  # unusable data is an error, not "no estimate"
    try:
        return _estimate_on(plane, dtype)
    except ValueError as exc:
        warnings.warn(f"{exc}. The data are taken as photon counts (gain 1 e⁻/ADU, offset "
                      "0, no read noise) for this run.", CalibrationWarning, stacklevel=3)
        return Calibration(gain=1.0, offset=0.0, read_noise=0.0,
                           source=f"assumed (no estimate: {exc})")


def channel_axis(axes: str | None, shape: tuple[int, ...], block_ndim: int) -> int | None:
    """The position of the C axis among an image's leading axes (before its ``block_ndim``
    block axes) when it holds more than one channel, else None: where an estimated
    calibration is made per channel (:func:`block_calibrations`, and ``pkl-dg batch``)."""
    lead = len(shape) - block_ndim
    if not axes or "C" not in axes[:max(lead, 0)]:
        return None
    c = axes.index("C")
    return c if shape[c] > 1 else None


def block_calibrations(image: Any, axes: str | None, lead: int, s: RestoreSettings,
                       fixed: Calibration | None = None
                       ) -> tuple[Callable[[tuple[int, ...]], Calibration], dict[str, Any]]:
    """The photon calibration of each block of a run, and what the metadata records of it.

    One calibration for the whole image (the settings' values, ``fixed``, or
    :func:`resolve_calibration`'s estimate), except where it is estimated ('auto') and the
    image has several channels among its ``lead`` leading axes (``axes`` names them): each
    channel is then estimated on its own, as its detector (or camera, or gain setting)
    has its own gain and offset. One estimate for all gave, with two detectors of offsets
    90 and 100 ADU, a channel that was all below the other's offset: restored as an empty
    image, under a warning to give the camera's offset that the user could not act on.

    Parameters
    ----------
    image
        The arranged image (leading axes, then the block axes), camera units.
    axes
        Its axes letters (None: unknown, one calibration).
    lead
        How many leading axes it has (the blocks are their index tuples).
    s
        The run's settings (``calibration`` 'auto' or 'manual' and the camera values).
    fixed
        A calibration to use as given for every block (e.g. batch's per-input estimate).

    Returns
    -------
    (calibration_of, record)
        ``calibration_of(block_index)`` → :class:`Calibration`; ``record`` the metadata's
        ``calibration``: that calibration's dict, or ``{"source": "estimated per channel",
        "channels": [...]}``.
    """
    shape = tuple(np.shape(image))
    c = channel_axis(axes, shape, len(shape) - lead)
    if fixed is not None or s.calibration != "auto" or c is None:
        cal = fixed if fixed is not None else resolve_calibration(image, s)
        return (lambda _idx: cal), cal.to_dict()
    cals = [resolve_calibration(np.take(image, k, axis=c), s)
            for k in range(np.shape(image)[c])]
    return ((lambda idx: cals[idx[c]]),
            {"source": "estimated per channel", "channels": [v.to_dict() for v in cals]})


def check_photon_counts(y: torch.Tensor, fm: ForwardModel, rough: torch.Tensor, disc: float,
                       auto: bool, info: dict[str, Any]) -> float:
    """The noise-level stop needs photon counts: check them on the rough RL fit.

    Returns the discrepancy target to use: unchanged for photon-like data; 0 (stop off) for
    data far less noisy than photon counts when the target was automatic. Warns either way.
    """
    s2 = fm.read_noise_var
    with torch.inference_mode():
        ratio = float(deviance_ratio((y + s2)[None], (fm.mean(rough) + s2)[None]))
    info["rough_deviance_ratio"] = round(ratio, 4)
    if ratio >= CALIBRATION_MIN_RATIO:
        return disc
    msg = (f"The image is less noisy than photon counts would be (a 20-iteration Richardson–Lucy "
           f"fit already explains it to {ratio:.2f} × the Poisson noise level), so it is probably "
           "not in photons: set the camera offset and gain (e⁻/ADU) to convert it. ")
    if auto:
        msg += "The automatic noise-level stop was switched off for this image."
        info["discrepancy_note"] = "off: data not photon counts"
        warnings.warn(msg, CalibrationWarning, stacklevel=3)
        return 0.0
    msg += f"The noise-level stop you set ({disc:g}) will end the guidance early."
    warnings.warn(msg, CalibrationWarning, stacklevel=3)
    return disc


def non_square_pixels(pixel_size_nm: tuple[float, float] | None, name: str
                      ) -> str | None:
    """What to tell the user when an image's pixels are not square (None when they are,
    to 1 %, or unknown): the PSF is built on a square grid of the X size.

    Parameters
    ----------
    pixel_size_nm
        (Y, X) pixel size in nm as the file or layer states it.
    name
        The image, for the message.
    """
    if not pixel_size_nm or not all(v and v > 0 for v in pixel_size_nm):
        return None
    py, px = (float(v) for v in pixel_size_nm)
    if abs(py / px - 1) <= 0.01:
        return None
    return (f"{name} has pixels of {py:g} × {px:g} nm (Y × X), not square: the PSF is built "
            f"on square pixels of the X size ({px:g} nm), so along Y it is {px / py:.2f}× "
            "its true width in pixels. Resample the image to square pixels first (e.g. "
            "skimage.transform.rescale along Y, or Fiji's Image › Scale).")


def physical_overrides(image: Any, given: set[str],
                       settings: RestoreSettings | None = None) -> dict[str, float]:
    """The settings the files' metadata fill in, each unless the user gave it (nm, to the
    settings' 4 decimals).

    From the image: its X pixel size and its Z step. From a PSF file (``settings`` with
    PSF model 'file'): its own pixel size and, in 3D mode, Z step, so that it is resampled
    to the image's grid; where the image states neither and the user gave none, the image's
    are taken from the PSF file too (same microscope, same sampling), so that the PSF is
    not resampled to an assumed pixel size.

    Parameters
    ----------
    image
        A :class:`~pkl_dg.io.read.MicroscopyImage` (``pixel_size_nm`` (Y, X) and
        ``z_step_nm``, None where the file states none).
    given
        Names of the settings the user gave.
    settings
        The run's settings, to read a PSF file's metadata (None: the image only).

    Raises
    ------
    ValueError
        The PSF file cannot be read.

    Warns
    -----
    PSFWarning
        The image's pixels are not square (:func:`non_square_pixels`) and no pixel size
        was given.
    """
    out: dict[str, float] = {}
    problem = non_square_pixels(image.pixel_size_nm, getattr(image.path, "name", "the image"))
    if problem and "pixel_size_nm" not in given and getattr(settings, "psf_kind", "") != "none":
        warnings.warn(problem, PSFWarning, stacklevel=2)
    if image.pixel_size_nm and "pixel_size_nm" not in given:
        out["pixel_size_nm"] = round(float(image.pixel_size_nm[1]), 4)
    if image.z_step_nm and "z_step_nm" not in given:
        out["z_step_nm"] = round(float(image.z_step_nm), 4)
    if settings is None or settings.psf_kind != "file" or not settings.psf_path:
        return out
    taken = psf_sampling_overrides(psf_file_sampling(settings.psf_path), settings, given)
    for name in ("pixel_size_nm", "z_step_nm"):  # the image states none either: the PSF's
        if f"psf_{name}" in taken and name not in given and name not in out:
            out[name] = taken[f"psf_{name}"]
    return {**out, **taken}


def psf_file_sampling(path: str) -> tuple[float | None, float | None]:
    """(Z step, pixel size) in nm that a PSF file's metadata states (None where it states
    none).

    Raises
    ------
    ValueError, FileNotFoundError
        The file cannot be read.
    """
    from pkl_dg.io import open_image

    psf = open_image(path, "PSF file")
    return psf.z_step_nm, float(psf.pixel_size_nm[1]) if psf.pixel_size_nm else None


def psf_sampling_overrides(stated: tuple[float | None, float | None],
                           settings: RestoreSettings, given: set[str]) -> dict[str, float]:
    """A measured PSF's own sampling for the settings that would otherwise take it as the
    image's ('PSF pixel size' / 'PSF Z step' 0 = same as image), so that it is resampled to
    the image's grid.

    Parameters
    ----------
    stated
        (Z step, pixel size) in nm that the PSF's source (file, layer, bead image) states;
        None where it states none.
    settings
        The run's settings (the Z step counts in 3D mode only).
    given
        Settings the user gave (kept as they are, a 0 included).

    Returns
    -------
    dict
        ``psf_pixel_size_nm`` / ``psf_z_step_nm`` (nm, 4 decimals) to set.
    """
    z, xy = stated
    return {name: round(float(value), 4) for name, value in
            (("psf_pixel_size_nm", xy), ("psf_z_step_nm", z if settings.mode == "3d" else None))
            if value and name not in given and not getattr(settings, name) > 0}

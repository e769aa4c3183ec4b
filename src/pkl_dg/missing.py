"""Pixels without a measurement: NaN or infinite values in the image.

A registered, stitched or drift-corrected image has them where no camera pixel saw the
sample (its border), and so has a plane a user masked with NaN. They carry no data, so
they are left out of the data fit (the forward model's likelihood mask, as saturated
pixels are: :mod:`pkl_dg.saturation`), and the result and its std are NaN there: the
restoration does not invent values where nothing was measured.

The estimates that read the image as a whole (the background, the intensity scale, the
automatic calibration) need a value at every pixel. Each missing pixel takes the value of
the nearest measured one (:func:`scipy.ndimage.distance_transform_edt`), which keeps the
image's levels at the border; the calibration's noise fit leaves these pixels, and those
within :data:`CALIBRATION_MARGIN` px of them (whose local statistics mix in the fill), out.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import ndimage

from pkl_dg.saturation import detect_saturation, fit_mask, report_saturation

#: px around missing pixels that the noise fit of the calibration leaves out as well (its
#: local means and residuals reach this far: :func:`pkl_dg.calibration.noise_residual`)
CALIBRATION_MARGIN = 3
HANDLING = ("left out of the data fit; filled with the nearest measured value for the "
            "estimates of background, scale and calibration; NaN in the result and its std")


class MissingDataWarning(UserWarning):
    """Pixels without a measurement (NaN, ±inf) were left out of the fit."""


def fill_missing(block: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Replace the non-finite values of ``block`` by the nearest finite one.

    Parameters
    ----------
    block
        One plane (Y, X) or volume (Z, Y, X), float, camera units; not modified.

    Returns
    -------
    filled : np.ndarray
        ``block`` itself when every value is finite, else a filled copy.
    missing : np.ndarray or None
        bool, ``block``'s shape, True where the value was missing; None when none was.

    Raises
    ------
    ValueError
        Not one value is finite: nothing was measured.
    """
    finite = np.isfinite(block)
    if finite.all():
        return block, None
    require_measured(finite)
    nearest = ndimage.distance_transform_edt(~finite, return_distances=False,
                                             return_indices=True)
    return block[tuple(nearest)], ~finite


def require_measured(finite: np.ndarray) -> None:
    """Raise ValueError when ``finite`` (bool, ``np.isfinite`` of a block) has no True:
    nothing was measured, so there is nothing to restore."""
    if not finite.any():
        raise ValueError("image holds no finite value (all NaN or infinite): nothing was "
                         "measured, so there is nothing to restore")


def calibration_mask(missing: np.ndarray | None) -> np.ndarray | None:
    """The pixels the calibration's noise fit leaves out for ``missing``: those and the ones
    within :data:`CALIBRATION_MARGIN` px (bool, same shape; None for None)."""
    if missing is None:
        return None
    return ndimage.binary_dilation(missing, iterations=CALIBRATION_MARGIN)


def report_missing(missing: np.ndarray | None, where: str = "",
                   warn: bool = True) -> dict[str, Any] | None:
    """Warn (unless ``warn`` is False) of the missing pixels and return their metadata entry
    (None when there are none)."""
    if missing is None:
        return None
    n = int(missing.sum())
    entry = {"pixels": n, "fraction": round(n / missing.size, 6), "handling": HANDLING}
    if warn:
        place = f" in {where}" if where else ""
        warnings.warn(
            f"{n} pixel(s){place} ({100 * n / missing.size:.2g} %) are NaN or infinite (e.g. "
            "the border of a registered or stitched image): they hold no measurement, so they "
            "are left out of the data fit, and the result and its std are NaN there.",
            MissingDataWarning, stacklevel=3)
    return entry


def block_fit(raw: np.ndarray, dtype: Any, where: str, delta_psf: bool,
              flagged: dict[str, int], info: dict[str, Any]
              ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """What of one block the data fit sees: its missing and saturated pixels left out.

    Parameters
    ----------
    raw
        The block as validated (camera units, float32, NaN and ±inf kept).
    dtype
        The dtype the data were stored in (for the saturation level).
    where
        The block's name in messages ("" for a single image).
    delta_psf
        A one-pixel PSF: saturated pixels stay in the fit (:func:`~pkl_dg.saturation.fit_mask`);
        missing ones never do.
    flagged
        Blocks of the run flagged so far per kind ("missing", "saturated"): a kind is
        warned of in the first block that has it only.
    info
        The block's metadata: gets "missing" and "saturated" entries where they apply.

    Returns
    -------
    filled : np.ndarray
        ``raw`` with every missing value filled (:func:`fill_missing`).
    missing : np.ndarray or None
        bool mask of the missing pixels, None if none.
    mask : np.ndarray or None
        The forward model's 0/1 float32 likelihood mask (1 = fit), None if every pixel fits.
    """
    filled, missing = fill_missing(raw)
    entry = report_missing(missing, where, warn=not flagged.get("missing"))
    if entry is not None:
        info["missing"] = entry
    sat = detect_saturation(filled, dtype, None if missing is None else ~missing)
    saturated = report_saturation(sat, where, warn=not flagged.get("saturated"), kept=delta_psf)
    if saturated is not None:
        info["saturated"] = saturated
    mask = fit_mask(sat, delta_psf)
    if missing is not None:
        mask = (~missing).astype(np.float32) if mask is None else mask * ~missing
    return filled, missing, mask

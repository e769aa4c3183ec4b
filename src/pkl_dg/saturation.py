"""Saturated (clipped) pixels: detection and the likelihood mask that leaves them out.

A camera pixel that reached its full scale reads the full-scale value whatever the true
intensity was: the number is a lower bound, not a Poisson count. Fitting it pulls the
estimate down around bright spots (and, with one intensity scale per image, can distort
everything else). Such pixels are therefore *excluded* from the data term: the forward model
carries a 0/1 mask (see :class:`pkl_dg.physics.ForwardModel`), so the likelihood, its
gradient, Richardson–Lucy and the misfit all ignore them; the object there is inferred from
the unsaturated neighbourhood through the PSF.

Two signs of saturation, in camera units (before offset and gain):

1. Integer data at its dtype's maximum (255 for uint8, 65535 for uint16, …).
2. A plateau at the image's own maximum: at least :data:`MIN_PLATEAU` connected pixels holding
   exactly the largest value (12- or 14-bit cameras stored in uint16, data clipped after
   scaling). Only where the image has at least :data:`MIN_LEVELS` distinct values, so that
   equal neighbours at the maximum cannot be coarse quantisation of a dim image.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

#: connected pixels (8-connectivity) at exactly the maximum that make a plateau
MIN_PLATEAU = 4
#: distinct values an image needs before a plateau at its maximum counts as clipping
MIN_LEVELS = 64


class SaturationWarning(UserWarning):
    """Saturated pixels were found and left out of the data fit."""


@dataclass(frozen=True)
class Saturation:
    """Saturated pixels of one block.

    Attributes
    ----------
    mask
        Boolean array of the block's shape, True where a pixel is saturated.
    level
        The saturation value in camera units (ADU), or None when nothing is saturated.
    reason
        ``"dtype maximum"``, ``"plateau at the image maximum"`` or ``""``.
    """

    mask: np.ndarray
    level: float | None
    reason: str

    @property
    def count(self) -> int:
        return int(self.mask.sum())

    def to_dict(self) -> dict[str, Any]:
        return {"pixels": self.count, "fraction": round(self.count / max(self.mask.size, 1), 6),
                "level_adu": self.level, "reason": self.reason,
                "handling": "excluded from the data fit (likelihood mask)"}


def detect_saturation(block: np.ndarray, dtype: Any,
                      measured: np.ndarray | None = None) -> Saturation:
    """Find saturated pixels of one plane or volume.

    Parameters
    ----------
    block
        The raw data (camera units, before offset/gain), any shape.
    dtype
        The dtype the data were stored in (integer dtypes saturate at their maximum).
    measured
        bool, ``block``'s shape: the pixels that were measured (None: all). Only these
        are looked at, so values filled in for missing pixels
        (:func:`~pkl_dg.missing.fill_missing`) are neither counted nor make a plateau.

    Returns
    -------
    Saturation
        Its mask has ``block``'s shape; all False when nothing is saturated.
    """
    arr = np.asarray(block)
    none = Saturation(np.zeros(arr.shape, dtype=bool), None, "")
    seen = arr if measured is None else arr[measured]
    if seen.size == 0:
        return none
    top = seen.max()
    at_top = arr == top if measured is None else (arr == top) & measured
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer) and dt.itemsize > 0 and top == np.iinfo(dt).max:
        return Saturation(at_top, float(top), "dtype maximum")
    if at_top.sum() < MIN_PLATEAU or np.unique(seen).size < MIN_LEVELS:
        return none
    labels, n = ndimage.label(at_top, structure=np.ones((3,) * arr.ndim, dtype=bool))
    sizes = np.bincount(labels.ravel())[1:]
    plateaus = np.flatnonzero(sizes >= MIN_PLATEAU) + 1
    if plateaus.size == 0:
        return none
    return Saturation(np.isin(labels, plateaus), float(top), "plateau at the image maximum")


#: how saturated pixels are handled when the PSF is a single pixel (pure denoising)
KEPT_FOR_DELTA_PSF = ("kept in the data fit at their clipped value: with a one-pixel PSF no "
                      "other pixel carries information about them, so the clipped value (a "
                      "lower bound) is the best the data give")


def report_saturation(sat: Saturation, where: str = "", warn: bool = True,
                      kept: bool = False) -> dict[str, Any] | None:
    """Warn (unless ``warn`` is False) about saturated pixels and return their metadata
    entry (None when there are none). ``kept``: they stay in the fit (one-pixel PSF)."""
    if sat.count == 0:
        return None
    entry = sat.to_dict()
    if kept:
        entry["handling"] = KEPT_FOR_DELTA_PSF
    if not warn:
        return entry
    place = f" in {where}" if where else ""
    how = ("are " + KEPT_FOR_DELTA_PSF + "." if kept else
           "is unknown, so they are left out of the data fit and the result there is "
           "inferred from their surroundings.")
    if kept:
        how = "is unknown; they " + how
    warnings.warn(
        f"{sat.count} saturated pixel(s){place} ({sat.reason}, {sat.level:g} ADU): their true "
        f"intensity {how} For quantitative work re-acquire with a shorter exposure or lower "
        "excitation.", SaturationWarning, stacklevel=3)
    return entry


#: a pixel that receives more than this share of a saturated pixel's light (through the
#: PSF) does not set the intensity scale: the PSF support, less FFT round-off
SATURATED_FOOTPRINT = 1e-6


def fit_mask(sat: Saturation, delta_psf: bool) -> np.ndarray | None:
    """The forward model's 0/1 float32 mask (1 = fit) for the saturated pixels of ``sat``;
    None where nothing is left out: no saturated pixel, or a one-pixel PSF (no other pixel
    carries information about a clipped one, so its clipped value is kept)."""
    if not sat.count or delta_psf:
        return None
    return (~sat.mask).astype(np.float32)


def scale_pixels(mask, operator):
    """Pixels that may set the intensity scale: those the PSF does not blur any left-out
    (saturated) pixel into.

    Parameters
    ----------
    mask
        The forward model's 0/1 mask (torch tensor, 1 = fit), or None.
    operator
        The run's :class:`~pkl_dg.physics.PSFConvolution`.

    Returns
    -------
    torch.Tensor or None
        bool, the mask's shape; None when ``mask`` is None (every pixel may).
    """
    if mask is None:
        return None
    return operator.A((mask <= 0).to(mask.dtype)) <= SATURATED_FOOTPRINT

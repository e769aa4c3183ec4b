"""Which pixels lie within a given reach of pixels left out of the data fit.

Pixels left out of the fit (saturated, missing: the forward model's mask < 1) and those a
PSF's reach from them hold what the data step made of an unknown intensity. Two places
need that neighbourhood: the network's view of x̂0 (:mod:`pkl_dg.diffusion.network_view`,
the PSF's lateral reach) and PKL's data budget (:mod:`pkl_dg.guidance.data_budget`, twice
the PSF's reach on every axis of the blur, where the fit is judged away from them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["near_unfit"]

_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def near_unfit(mask: torch.Tensor | None, reach: tuple[int, ...]) -> torch.Tensor | None:
    """Pixels within ``reach`` of a pixel left out of the fit (a box dilation).

    Parameters
    ----------
    mask
        Fit weights (1 = fit, < 1 = left out), shape ``(..., *S)`` where ``S`` are the last
        ``len(reach)`` axes (leading axes are separate planes or volumes), or None.
    reach
        Half sizes of the box in px along the last 1–3 axes (≥ 0), e.g. the PSF's radius.

    Returns
    -------
    torch.Tensor or None
        bool, the mask's shape: True within ``reach`` (per axis) of a left-out pixel, those
        pixels included; None if ``mask`` is None or leaves no pixel out.

    Raises
    ------
    ValueError
        ``reach`` has other than 1–3 axes, more than the mask, or a negative entry.
    """
    if not 1 <= len(reach) <= 3 or any(r < 0 for r in reach):
        raise ValueError(f"reach must be 1–3 half sizes ≥ 0, got {reach}")
    if mask is None:
        return None
    if len(reach) > mask.ndim:
        raise ValueError(f"a reach along {len(reach)} axes needs a mask of at least that "
                         f"many, got shape {tuple(mask.shape)}")
    unfit = mask < 1
    if not bool(unfit.any()):
        return None
    d = len(reach)
    boxes = unfit.reshape(-1, 1, *mask.shape[-d:]).float()
    near = _POOL[d](boxes, tuple(2 * r + 1 for r in reach), stride=1, padding=tuple(reach)) > 0
    return near.reshape(mask.shape)

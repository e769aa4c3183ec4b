"""The measured rectangle that a comparison's metrics are scored on.

A registered or stitched image has a border of NaN pixels (no measurement); a restoration
leaves them NaN (:mod:`pkl_dg.missing`). PSNR, SSIM and NRMSE (DESIGN §4) and the FRC
(:mod:`pkl_dg.frc`: FFTs of the whole image) need a value at every pixel, so they are
scored on the largest rectangle that is measured in every image: the border is trimmed,
one row or column at a time, from the edge with the largest share of missing pixels
(greedy, exact for a border that is missing along whole edges and close for a tilted
one). Missing pixels inside the image, which no trimming reaches without throwing most of
it away, are refused.
"""

from __future__ import annotations

import numpy as np

#: least side (px) of the scored rectangle (the FRC needs rings to average over)
MIN_SCORED_SIDE = 32


def measured_rectangle(*images: np.ndarray) -> tuple[slice, slice] | None:
    """The rectangle (rows, columns) where every one of ``images`` is finite.

    Parameters
    ----------
    *images
        2D arrays (Y, X) of one shape (a result, the ground truth, the input).

    Returns
    -------
    tuple of slice or None
        None when every pixel of every image is finite (nothing to trim).

    Raises
    ------
    ValueError
        The shapes differ, or the rectangle left is under :data:`MIN_SCORED_SIDE` px on a
        side (missing pixels inside the image, not only along its border).
    """
    shapes = {np.shape(a) for a in images}
    if len(shapes) != 1:
        raise ValueError(f"images of different shapes: {sorted(shapes)}")
    bad = np.zeros(shapes.pop(), dtype=bool)
    for a in images:
        bad |= ~np.isfinite(np.asarray(a))
    if not bad.any():
        return None
    y0, x0, (y1, x1) = 0, 0, bad.shape
    while y1 - y0 >= MIN_SCORED_SIDE and x1 - x0 >= MIN_SCORED_SIDE:
        view = bad[y0:y1, x0:x1]
        if not view.any():
            return slice(y0, y1), slice(x0, x1)
        shares = (view[0].mean(), view[-1].mean(), view[:, 0].mean(), view[:, -1].mean())
        edge = int(np.argmax(shares))
        y0, y1 = y0 + (edge == 0), y1 - (edge == 1)
        x0, x1 = x0 + (edge == 2), x1 - (edge == 3)
    raise ValueError(
        f"{int(bad.sum())} pixel(s) are NaN or infinite inside the image, not only along "
        f"its border: no measured rectangle of at least {MIN_SCORED_SIDE}×{MIN_SCORED_SIDE} "
        "px is left to score on. Crop the images to a measured region first")


def region_text(region: tuple[slice, slice], shape: tuple[int, int]) -> str:
    """How a table says which pixels were scored, e.g. ``"rows 0–511, columns 8–503 of
    512×512 (the NaN border left out)"`` (inclusive pixel indices)."""
    rows, cols = region
    return (f"rows {rows.start}–{rows.stop - 1}, columns {cols.start}–{cols.stop - 1} of "
            f"{shape[0]}×{shape[1]} (the NaN border left out)")

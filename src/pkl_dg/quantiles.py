"""Quantiles of image-sized tensors by selection, not sorting.

``torch.quantile`` sorts its input (O(n log n); on one CPU thread about 15 ms for a 512²
image, and it refuses more than 2²⁴ values), while numpy's ``np.quantile`` selects
(introselect, O(n)). Both interpolate linearly between order statistics, so the values
agree up to float rounding.
"""

from __future__ import annotations

import numpy as np
import torch


def quantile(values: torch.Tensor, q: float) -> float:
    """The ``q`` quantile of all elements of ``values`` (linear interpolation).

    Parameters
    ----------
    values : torch.Tensor
        Any shape and device (copied to the host when not there), real dtype.
    q : float
        In [0, 1].

    Returns
    -------
    float

    Raises
    ------
    ValueError
        ``values`` is empty or ``q`` is outside [0, 1] (numpy's message).
    """
    flat = values.detach().reshape(-1)
    if flat.numel() == 0:
        raise ValueError("quantile of an empty selection")
    return float(np.quantile(flat.float().cpu().numpy(), q))

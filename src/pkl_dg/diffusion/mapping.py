"""The one mapping between photon intensities and the network's domain.

z = 2·x/s − 1, x = (z + 1)·s/2, with one scale s per image. The prior was trained on
clean images normalised to [0, 1] (99.9th percentile ≈ 0.7–0.9), so s should place the
image's bright structures there: :func:`scale_from_estimate` takes
s = 1.2 × the 99.9th percentile of a rough deconvolution (20 Richardson–Lucy
iterations), the choice measured best in DESIGN §7.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pkl_dg.quantiles import quantile

SCALE_FACTOR = 1.2
SCALE_PERCENTILE = 99.9


@dataclass(frozen=True)
class IntensityMapping:
    scale: float

    def __post_init__(self) -> None:
        if not (self.scale > 0 and self.scale < float("inf")):
            raise ValueError(f"intensity scale must be positive and finite, got {self.scale}")

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        return x * (2.0 / self.scale) - 1.0

    def to_intensity(self, z: torch.Tensor) -> torch.Tensor:
        return (z + 1.0) * (self.scale / 2.0)


def scale_from_estimate(estimate: torch.Tensor, where: torch.Tensor | None = None) -> float:
    """s = 1.2 × the 99.9th percentile of a rough estimate (photons).

    Parameters
    ----------
    estimate
        A rough deconvolution, photons, any shape.
    where
        Boolean tensor like ``estimate``: only these pixels set the scale (the restoration
        leaves out saturated pixels and every pixel they blur into: a clipped bead's
        reconstruction can be 100× the rest of the field and would otherwise set s).

    Raises
    ------
    ValueError
        No signal above background, or ``where`` selects no pixel.
    """
    flat = estimate.detach()
    if where is not None:
        if not bool(where.any()):
            raise ValueError("every pixel lies within the blur of a saturated pixel: there is "
                             "no unsaturated structure to restore (re-acquire with a shorter "
                             "exposure or lower excitation)")
        flat = flat[where.expand_as(flat)]
    p = quantile(flat, SCALE_PERCENTILE / 100)
    if not p > 0:
        raise ValueError("the image has no signal above background: nothing to restore "
                         "(check offset/background settings)")
    return SCALE_FACTOR * p

"""What the network's next state may see of x̂0 where the data do not constrain it.

Pixels left out of the data fit (saturated, missing) and those within the PSF's reach of
them hold what the data step made of an unknown intensity: a clipped bead reconstructed far
above the scale s. The network sees x̂0 clipped at ``Z_MAX`` everywhere; there it sees it
clipped at :data:`UNFIT_Z_MAX` (the scale s), because the network's group normalisation and
attention spread a bright input over the whole field: two clipped beads in a 96² phantom
moved x̂0 far from them by 0.006–0.013 rms (model units; its own error there 0.016–0.16,
``/work/exp21/netspot.py``). The result is not clipped: the data step and the output keep
the unclipped x̂0.
"""

from __future__ import annotations

import torch
from einops import repeat

from pkl_dg.physics.unfit_reach import near_unfit

#: the network's view of x̂0 is clipped here (model units: the scale s) in unfit pixels and
#: their PSF reach
UNFIT_Z_MAX = 1.0


def view_ceiling(mask: torch.Tensor | None, radius: tuple[int, ...], z_max: float,
                 planes: int | None = None, layout: str = "plane h w", samples: int = 1
                 ) -> torch.Tensor | None:
    """Per-pixel upper bound of the network's view of x̂0, or None where it is ``z_max``
    everywhere (no pixel is left out of the fit).

    Parameters
    ----------
    mask
        The forward model's fit weights, (H, W) or (P, H, W) (1 = fit, 0 = left out), or
        None.
    radius
        The PSF's half sizes (px); the last two are its lateral reach.
    z_max
        The bound elsewhere (model units).
    planes, layout, samples
        The bound is returned for ``samples`` samples of ``planes`` planes in the einops
        ``layout`` of x̂0 (axes ``sample``, ``plane``, ``h``, ``w``; default: the mask's
        planes, (P, H, W)).

    Returns
    -------
    torch.Tensor or None
        float32 on the mask's device: :data:`UNFIT_Z_MAX` within the lateral PSF reach of a
        pixel left out of the fit, ``z_max`` elsewhere.
    """
    near = near_unfit(mask, tuple(radius[-2:]))
    if near is None:
        return None
    bound = torch.where(near.reshape(-1, *near.shape[-2:]), UNFIT_Z_MAX, z_max).to(torch.float32)
    bound = bound.expand(planes or len(bound), -1, -1)
    return repeat(bound, f"plane h w -> {layout}", **({"sample": samples} if "sample" in layout
                                                       else {}))

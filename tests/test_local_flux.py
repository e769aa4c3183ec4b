"""The final denoising pass keeps the local flux: a dim cell beside a bright one.

A new-user trial found a dim nucleus next to a bright one restored 30 % too dim, its
posterior std low: the final pass denoises at the image's mean level, far above the dim
cell's own noise, and shrank it into the background.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from pkl_dg import restore
from pkl_dg.diffusion.local_flux import FLUX_K, FLUX_SIGMA, keep_local_flux


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return ndimage.gaussian_filter(((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(float), 1.0)


def test_grain_removed_stays_removed_and_lost_flux_comes_back():
    g = torch.Generator().manual_seed(0)
    level, fraction = 100.0, 0.5
    before = torch.full((2, 64, 64), level)
    before[:, 20:44, 20:44] += 30.0
    grain = fraction * math.sqrt(level) * torch.randn(before.shape, generator=g)
    # a pass that only removed grain (edges included): none of it comes back
    after = before - grain
    torch.testing.assert_close(keep_local_flux(before, after, fraction, 0.0), after)
    # a pass that also took 30 % of the square's excess: it is put back (away from its edge)
    lost = before.clone()
    lost[:, 20:44, 20:44] -= 9.0
    got = keep_local_flux(before, lost, fraction, 0.0)
    back = float(got[:, 26:38, 26:38].mean())  # less the tolerance: K low-passed grain stds
    assert 130.0 - 2 * FLUX_K * fraction * math.sqrt(130.0) / (2 * math.sqrt(math.pi) *
                                                             FLUX_SIGMA) < back <= 130.0
    assert float(got[:, :8, :8].mean()) == pytest.approx(level, abs=0.5)  # far from it: alone
    assert got.shape == before.shape and bool((got >= 0).all())


def test_a_dim_cell_beside_a_bright_one_keeps_its_brightness():
    """Two textured cells, ≈1000 and ≈11 photons, σ 1.5 px blur, default PKL: the dim one
    came out at 67 % of its true mean (73 % with this seed's texture: 7.51 of 11.16); it must
    be within 20 %."""
    shape = (96, 192)
    rng = np.random.default_rng(0)
    tex = 1 + 0.3 * ndimage.gaussian_filter(rng.standard_normal(shape), 2) / 0.14
    gt = (1000 * _disk(shape, 48, 48, 22) + 11 * _disk(shape, 48, 144, 22)) * tex + 0.5
    y = rng.poisson(ndimage.gaussian_filter(gt, 1.5)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = restore(y, psf_sigma=1.5, calibration="manual", gain=1.0, offset=0.0,
                      threads=1, seed=0)
    dim = gt[:, 96:] > 0.25 * gt[:, 96:].max()
    bright = gt[:, :96] > 0.25 * gt[:, :96].max()
    assert out[:, 96:][dim].mean() > 0.8 * gt[:, 96:][dim].mean()
    assert out[:, :96][bright].mean() == pytest.approx(gt[:, :96][bright].mean(), rel=0.03)

"""Fourier ring correlation: the conventions and the behaviour a resolution measure must have."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from pkl_dg.frc import frc_curve, frc_resolution, frc_single


def texture(n: int = 256, seed: int = 0) -> np.ndarray:
    """A well-sampled object with structure at all frequencies up to Nyquist."""
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random((n, n)), 1.0) * 400.0


def noisy_pair(obj: np.ndarray, sigma: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mean = ndimage.gaussian_filter(obj, sigma) + 5.0
    return rng.poisson(mean).astype(np.float64), rng.poisson(mean).astype(np.float64)


def test_identical_images_give_nyquist():
    img = texture()
    freqs, corr = frc_curve(img, img)
    assert np.allclose(corr, 1.0)
    assert freqs[0] > 0 and math.isclose(freqs[-1], 0.5)
    res = frc_resolution(img, img, pixel_size_nm=65.0)
    assert res.resolution_px == 2.0
    assert res.resolution_nm == pytest.approx(130.0)


def test_curve_frequencies_are_cycles_per_pixel_on_rectangles():
    rng = np.random.default_rng(3)
    a = rng.random((64, 96))
    freqs, corr = frc_curve(a, a)
    assert freqs[0] == pytest.approx(1 / 64)
    assert freqs[-1] == pytest.approx(0.5)
    assert corr.shape == freqs.shape


@pytest.mark.parametrize("seed", [0, 1])
def test_resolution_worsens_monotonically_with_blur(seed):
    obj = texture(seed=seed)
    pair_res, gt_res = [], []
    for sigma in (1, 2, 3, 4):
        a, b = noisy_pair(obj, sigma, seed + 10)
        pair_res.append(frc_resolution(a, b).resolution_px)
        gt_res.append(frc_resolution(a, obj).resolution_px)
    assert all(np.isfinite(pair_res)) and all(np.isfinite(gt_res))
    assert all(x < y for x, y in zip(pair_res, pair_res[1:])), pair_res
    assert all(x < y for x, y in zip(gt_res, gt_res[1:])), gt_res
    assert pair_res[0] > 2.0  # the noise does limit it


def test_independent_noise_images_resolve_nothing():
    rng = np.random.default_rng(5)
    for _ in range(5):
        res = frc_resolution(rng.random((128, 128)), rng.random((128, 128))).resolution_px
        assert res > 20.0  # at best a spurious low ring; usually inf


def test_shape_mismatch_and_bad_input_raise():
    a = np.ones((32, 32)) + np.eye(32)
    with pytest.raises(ValueError, match="same shape"):
        frc_resolution(a, a[:, :31])
    with pytest.raises(ValueError, match="2D"):
        frc_curve(a[None], a[None])
    with pytest.raises(ValueError, match="constant"):
        frc_curve(a, np.ones((32, 32)))
    with pytest.raises(ValueError, match="threshold"):
        frc_resolution(a, a, threshold=1.5)


def test_single_image_frc_tracks_two_image_frc():
    obj = texture(n=256, seed=2)
    singles, pairs = [], []
    for sigma in (1, 2, 4):
        a, b = noisy_pair(obj, sigma, 7)
        singles.append(frc_single(a).resolution_px)
        pairs.append(frc_resolution(a, b).resolution_px)
    assert all(x < y for x, y in zip(singles, singles[1:])), singles
    for s, p in zip(singles, pairs):
        assert s >= 4.0 and s == pytest.approx(p, rel=0.35)

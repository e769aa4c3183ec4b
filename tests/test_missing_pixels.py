"""Pixels without a measurement (NaN, ±inf): left out of the fit, NaN in the result.

Before, any NaN refused the whole image ("pkl-dg cannot leave pixels out of the data fit"),
so a registered or stitched image with a NaN border had to be cropped or filled by hand.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage

from pkl_dg import restore
from pkl_dg.inputs import estimate_image_calibration, validate_image
from pkl_dg.missing import MissingDataWarning
from pkl_dg.restoration import restore_iter


def _camera(shape=(96, 128), gain=0.5, offset=100.0, seed=0):
    rng = np.random.default_rng(seed)
    obj = np.zeros(shape)
    obj[20:76:8, 30:120] = 60.0  # lines
    obj[40:60, 60:64] = 120.0
    photons = ndimage.gaussian_filter(obj, 2.0) + 4.0
    return (offset + rng.poisson(photons) / gain + rng.normal(0, 2, shape)).astype(np.float32)


def test_a_nan_border_is_left_out_of_the_fit_and_nan_in_the_result():
    img = _camera()
    img[:, :24] = np.nan  # a registered image's border
    img[50, 100] = np.inf  # and one broken value
    before = img.copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = restore_iter(img, psf_sigma=2.0, steps=2, samples=2, threads=1).finish()
    np.testing.assert_array_equal(img, before)  # the input is never modified
    missing = ~np.isfinite(before)
    assert np.isnan(res.image[missing]).all() and np.isfinite(res.image[~missing]).all()
    assert np.isnan(res.std[missing]).all() and np.isfinite(res.std[~missing]).all()
    said = [w for w in caught if issubclass(w.category, MissingDataWarning)]
    assert len(said) == 1 and f"{int(missing.sum())} pixel(s)" in str(said[0].message)
    entry = res.metadata["missing"]
    assert entry["pixels"] == int(missing.sum()) and "NaN in the result" in entry["handling"]


def test_far_from_a_nan_border_rl_restores_as_the_measured_crop_does():
    """The NaN columns are out of the likelihood: RL on the rest of the image gives, away
    from the border, what RL on the measured part alone gives (the crop)."""
    img = _camera()
    hole = img.copy()
    hole[:, :32] = np.nan
    kw = dict(method="rl", rl_iterations=20, psf_sigma=2.0, calibration="manual", gain=0.5,
              offset=100.0, background=4.0, threads=1)
    with pytest.warns(MissingDataWarning):
        got = restore(hole, **kw)
    crop = restore(img[:, 32:], **kw)
    inner = (slice(16, -16), slice(64, -16))  # > 4 PSF widths from every edge
    np.testing.assert_allclose(got[:, 32:][inner], crop[inner], rtol=0.02, atol=0.05)


def test_missing_pixels_are_out_of_the_likelihood_mask_even_for_a_one_pixel_psf():
    """Saturated pixels stay in the fit for a one-pixel PSF (nothing else informs them);
    missing ones never do: they hold no value at all."""
    from pkl_dg.missing import block_fit

    raw = np.full((8, 8), 10.0, np.float32)
    raw[0, :3] = np.nan
    raw[5, 5] = 65535.0
    for delta in (True, False):
        info = {}
        filled, missing, mask = block_fit(raw.copy(), np.uint16, "", delta, {}, info)
        assert np.isfinite(filled).all() and missing.sum() == 3
        assert (mask[0, :3] == 0).all() and mask[5, 5] == (1.0 if delta else 0.0)
        assert mask.sum() == 64 - 3 - (not delta)
        assert info["missing"]["pixels"] == 3 and info["saturated"]["pixels"] == 1


def test_the_calibration_estimate_ignores_a_nan_border():
    img = _camera(shape=(160, 160), gain=0.5, offset=100.0)
    hole = img.copy()
    hole[:, :40] = np.nan
    got, crop = estimate_image_calibration(hole), estimate_image_calibration(img[:, 40:])
    assert got.gain == pytest.approx(crop.gain, rel=0.03)
    assert got.offset == pytest.approx(crop.offset, abs=1.0)


def test_an_image_without_one_measured_value_is_refused():
    with pytest.raises(ValueError, match="no finite value"):
        next(restore_iter(np.full((32, 32), np.nan, np.float32), method="rl"))


def test_a_stack_says_it_once_and_each_plane_keeps_its_count():
    stack = np.stack([_camera(seed=s) for s in range(3)])
    stack[0, :, :10] = np.nan
    stack[2, :5] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = restore_iter(stack, method="rl", rl_iterations=3, psf_sigma=2.0,
                           threads=1).finish()
    blocks = res.metadata["blocks"]
    assert [b.get("missing", {}).get("pixels", 0) for b in blocks] == [96 * 10, 0, 5 * 128]
    said = [str(w.message) for w in caught if issubclass(w.category, MissingDataWarning)]
    assert len(said) == 2 and "in 2 of 3 planes" in said[1]  # the first, then the summary
    assert np.isnan(res.image[0, :, :10]).all() and np.isfinite(res.image[1]).all()


def test_steps_that_need_every_value_still_refuse_nan_and_say_what_restores():
    """Compare scores against a ground truth pixel by pixel: NaN stays an error there, which
    now says that a restoration handles it."""
    img = _camera()
    img[:, :4] = np.nan
    with pytest.raises(ValueError, match=r"384 NaN .* crop the image.* leaves them out"):
        validate_image(img)


def test_saturated_pixels_are_counted_where_measured_not_where_filled_in():
    """A clipped pixel beside a NaN border is copied into the border by the filling; only
    the measured ones are saturated (and plateaus of filled copies do not make clipping)."""
    from pkl_dg.missing import block_fit

    img = _camera()
    img[10:14, 24:26] = 4095.0  # 8 clipped pixels at the edge of the border
    img[:, :24] = np.nan
    info: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, missing, mask = block_fit(img, np.float32, "", False, {}, info)
    assert info["saturated"]["pixels"] == 8
    assert mask[10:14, 24:26].sum() == 0 and mask[missing].sum() == 0
    one = _camera()
    one[30, 24] = 4095.0  # one top value: its copies in the border are no plateau
    one[:, :24] = np.nan
    info = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block_fit(one, np.float32, "", False, {}, info)
    assert "saturated" not in info

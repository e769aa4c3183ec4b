"""Issue 13, items 3 and 7: negative input values (background-subtracted data, negative
camera offsets) and saturated pixels."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from cases import read
from pkl_dg.metrics import care_scores
from pkl_dg.negatives import NegativeDataWarning
from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf
from pkl_dg.restoration import restore_iter
from pkl_dg.saturation import SaturationWarning, detect_saturation


def _blurred_counts(obj: np.ndarray, background: float, seed: int = 0) -> np.ndarray:
    fm = ForwardModel(PSFConvolution(gaussian_psf(2.0)), background)
    mu = fm.mean(torch.from_numpy(obj.astype(np.float32)))
    return torch.poisson(mu, generator=torch.Generator().manual_seed(seed)).numpy()


def _rl(image, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # the data are photon counts (or photons less a level): the pedestal policy is what
        # is tested, so no calibration estimate (which would take the level as an offset)
        kw.setdefault("calibration", "manual")
        result = restore_iter(image, method="rl", rl_iterations=30,
                              psf_sigma=2.0, **kw).finish()
    return result, [w for w in caught]


def _object(n: int = 96) -> np.ndarray:
    from conftest import phantom

    return phantom(n, seed=3) * 6


# ---------------------------------------------------------------- negative values (item 3)
def test_background_subtracted_data_restore_like_the_photons_they_came_from():
    obj = _object()
    counts = _blurred_counts(obj, background=20.0)
    subtracted = counts - 20.0  # the user's own background subtraction: ~1/3 negative
    assert (subtracted < 0).mean() > 0.2
    ref, _ = _rl(counts, background=20.0)
    out, caught = _rl(subtracted)
    neg = out.metadata["negative_values"]
    assert abs(neg["pedestal_photons"] - 20.0) < 4.0  # the subtracted level, recovered
    assert neg["pixels_clipped"] == 0
    assert any(issubclass(w.category, NegativeDataWarning) for w in caught)
    # flux as for the original photons (within 3 %), quality at least as good
    assert abs(out.image.sum() / ref.image.sum() - 1) < 0.03
    assert care_scores(out.image, obj)["psnr"] > care_scores(ref.image, obj)["psnr"] - 0.2
    clamped, _ = _rl(np.clip(subtracted, 0, None))  # what clamping (the old way) gives
    assert care_scores(out.image, obj)["psnr"] > care_scores(clamped.image, obj)["psnr"] + 0.3


@pytest.mark.parametrize("method", ["rl", "pkl"])
def test_an_offset_given_a_little_too_high_still_restores_the_structures(method):
    """A 90 ADU dark level with the offset given as 101.8: 58 % of the pixels below it. RL
    started flat at the data's mean above background, here below 0, i.e. at 0.001 photons;
    the automatic stop took the barely moving fit for stalled after 3 iterations and both
    methods returned an empty image (max 0.003 photons, said nowhere). The start is now
    the level of the positive part: the structures come back."""
    from scipy.ndimage import gaussian_filter

    from pkl_dg.napari.sample_data import make_sample

    rng = np.random.default_rng(0)
    truth = make_sample()[1][:128, :128].astype(np.float64)  # the plugin's cells sample
    lam = gaussian_filter(truth / truth.max() * 60, 2.0) + 2
    img = (rng.poisson(lam * 0.5) * 4.0 + 90).astype(np.uint16)  # 4 ADU/e⁻, offset 90
    kw = dict(method=method, threads=1, psf_sigma=2.0, steps=4, samples=1, seed=0)
    with pytest.warns(NegativeDataWarning, match="offset given is probably too high"):
        wrong = restore_iter(img, calibration="manual", gain=0.972, offset=101.8, **kw).finish()
    assert wrong.metadata["negative_values"]["fraction_negative"] > 0.5
    if method == "rl":
        assert wrong.metadata["rl_auto_iterations"] > 10
    right = restore_iter(img, calibration="manual", gain=0.25, offset=90, **kw).finish()
    assert wrong.image.max() > 0.2 * right.image.max() * 0.972 / 0.25
    # the same structures: correlated with the result of the right calibration
    assert np.corrcoef(wrong.image.ravel(), right.image.ravel())[0, 1] > 0.8


def test_non_negative_data_are_left_alone():
    out, caught = _rl(_blurred_counts(_object(), background=5.0))
    assert "negative_values" not in out.metadata
    assert not any(issubclass(w.category, NegativeDataWarning) for w in caught)


def test_values_still_below_the_pedestal_are_counted_as_clipped():
    img = _blurred_counts(_object(), background=4.0) - 4.0
    img[10, 10] = -500.0  # a dead/odd pixel far below the noise
    out, caught = _rl(img)
    assert out.metadata["negative_values"]["pixels_clipped"] >= 1
    assert any("clipped" in str(w.message) for w in caught)


def test_negative_camera_offset_is_accepted():
    counts = _blurred_counts(_object(), background=3.0)
    shifted = counts - 50.0  # a camera whose baseline sits at −50 ADU after export
    a, _ = _rl(shifted, offset=-50.0, background=3.0)
    b, _ = _rl(counts, background=3.0)
    assert np.allclose(a.image, b.image, rtol=1e-4, atol=1e-3)
    assert "negative_values" not in a.metadata


def test_case_03_negative_values():
    y = read("03_negative_values", "input.tif")
    gt = read("03_negative_values", "gt.tif")
    out, caught = _rl(y, psf_kind="gaussian")
    assert any(issubclass(w.category, NegativeDataWarning) for w in caught)
    assert 15 < out.metadata["negative_values"]["pedestal_photons"] < 25
    ref, _ = _rl(y + 20.0, background=20.0)  # the same photons, never subtracted
    assert abs(out.image.sum() / ref.image.sum() - 1) < 0.03
    assert care_scores(out.image, gt)["psnr"] >= care_scores(ref.image, gt)["psnr"] - 0.2


# ---------------------------------------------------------------- saturation (item 7)
def test_detects_dtype_maximum_and_plateaus_only():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 200, (32, 32)).astype(np.uint8)
    u8[5, 5] = 255
    assert detect_saturation(u8, u8.dtype).count == 1
    twelve_bit = rng.integers(100, 3000, (32, 32)).astype(np.uint16)
    twelve_bit[10:12, 10:13] = 4095  # a 12-bit camera stored in uint16
    sat = detect_saturation(twelve_bit, twelve_bit.dtype)
    assert sat.count == 6 and sat.reason.startswith("plateau") and sat.level == 4095
    clipped_float = rng.random((32, 32)).astype(np.float32) * 0.9
    clipped_float[20:23, 3:5] = 1.0
    assert detect_saturation(clipped_float, np.float32).count == 6
    # dim photon counts: equal neighbours at the maximum are quantisation, not clipping
    dim = rng.poisson(1.0, (64, 64)).astype(np.uint16)
    assert detect_saturation(dim, dim.dtype).count == 0
    lone = rng.integers(0, 1000, (32, 32)).astype(np.uint16)
    lone[4, 4] = lone[20, 20] = 5000  # two separate bright pixels: not a plateau
    assert detect_saturation(lone, lone.dtype).count == 0


def test_saturated_pixels_are_left_out_of_the_fit():
    obj = np.zeros((64, 64), np.float32)
    obj[32, 32] = 2e5  # a bright bead: peak ≈ 8000 photons per pixel
    obj[10:54, 12] = 40.0  # dim filament
    counts = _blurred_counts(obj, background=10.0) + 100.0  # camera offset 100 ADU
    clipped = np.minimum(counts, 4000).astype(np.uint16)
    clipped[clipped == 4000] = np.iinfo(np.uint16).max  # the camera's full scale
    kw = dict(offset=100.0, background=10.0, rl_iterations=200)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = restore_iter(clipped, method="rl", psf_sigma=2.0, **kw).finish()
    assert any(issubclass(w.category, SaturationWarning) for w in caught)
    sat = res.metadata["saturated"]
    assert sat["pixels"] == int((clipped == 65535).sum()) > 5
    # the bead's flux comes back from its unsaturated wings; fitting the clipped values
    # (the old way, a forward model without the mask) loses much of it
    box = (slice(24, 41), slice(24, 41))
    assert abs(res.image[box].sum() / 2e5 - 1) < 0.05
    from pkl_dg.richardson_lucy import richardson_lucy

    y = torch.from_numpy(np.minimum(counts, 4000).astype(np.float32) - 100.0)
    fitted = richardson_lucy(y, ForwardModel(PSFConvolution(gaussian_psf(2.0)), 10.0), 200)
    assert float(fitted[box].sum()) / 2e5 < 0.9
    # a float copy clipped at its maximum is found too (a plateau, not the dtype maximum)
    as_float = np.minimum(counts, 4100).astype(np.float32)
    meta = restore_iter(as_float, method="rl", psf_sigma=2.0, offset=100.0,
                        background=10.0, rl_iterations=1).finish().metadata
    assert meta["saturated"]["reason"].startswith("plateau")


def test_nll_ignores_masked_pixels():
    conv = PSFConvolution(gaussian_psf(1.5))
    y = torch.full((32, 32), 5.0)
    x = torch.full((32, 32), 5.0)
    bad = y.clone()
    bad[10, 10] = 1e4
    mask = torch.ones(32, 32)
    mask[10, 10] = 0
    from pkl_dg.guidance import get_likelihood

    for name in ("pkl", "anscombe", "l2"):
        lik = get_likelihood(name)
        a = lik.nll(x, bad, ForwardModel(conv, 0.0, 0.0, mask))
        b = lik.nll(x, y, ForwardModel(conv, 0.0, 0.0, mask))
        assert torch.allclose(a, b), name
        g = lik.grad(x, bad, ForwardModel(conv, 0.0, 0.0, mask))
        assert torch.allclose(g, lik.grad(x, y, ForwardModel(conv, 0.0, 0.0, mask))), name


def test_case_12_saturated_pixels_detected_and_reported():
    y = read("12_saturated_uint16", "input.tif")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = restore_iter(y, method="rl", rl_iterations=5, offset=100.0).finish()
    sat = res.metadata["saturated"]
    assert sat["pixels"] == int((y == 65535).sum()) > 0
    assert sat["reason"] == "dtype maximum"
    assert any(issubclass(w.category, SaturationWarning) for w in caught)


def test_a_stack_warns_once_per_kind_with_a_summary():
    rng = np.random.default_rng(0)
    stack = rng.integers(100, 3000, (4, 32, 32)).astype(np.uint16)
    stack[:, 5, 5] = 65535  # every plane saturated
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = restore_iter(stack, method="rl", rl_iterations=1).finish()
    sat = [w for w in caught if issubclass(w.category, SaturationWarning)]
    assert len(sat) == 2 and "in 4 of 4 planes" in str(sat[1].message)
    assert all(b["saturated"]["pixels"] == 1 for b in res.metadata["blocks"])


def test_values_beyond_an_estimated_offsets_read_noise_are_warned_of():
    """With a calibration estimated from the image, values a little below its offset are
    read noise (no warning); values far below it mean the estimate is too high for the
    image, which was recorded but never said (C. elegans: 1.2 % down to −80 photons)."""
    from pkl_dg.negatives import negative_value_pedestal

    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.normal(20.0, 2.0, 10000) - 20.0)  # read noise σ 2 e⁻
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _s2, info = negative_value_pedestal(noise, 4.0, estimated=True)
    assert info is not None and "below_estimated_offset" not in info and not caught
    far = noise.clone()
    far[:120] = -80.0
    with pytest.warns(NegativeDataWarning, match="below the camera offset estimated"):
        _s2, info = negative_value_pedestal(far, 4.0, estimated=True)
    assert info["below_estimated_offset"] and info["min_photons"] == -80.0


def test_celegans_as_given_warns_that_its_estimated_offset_is_too_high(realdata):
    import tifffile

    image = tifffile.imread(realdata / "sdeconv" / "celegans.tif")
    with pytest.warns(NegativeDataWarning, match="below the camera offset estimated"):
        result = restore_iter(image, method="rl", rl_iterations=2, psf_sigma=2.0).finish()
    assert result.metadata["negative_values"]["below_estimated_offset"]

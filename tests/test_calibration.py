"""Photon calibration from the image itself, and restorations that do not depend on scale."""

import numpy as np
import pytest
from scipy import ndimage

from pkl_dg import restore, restore_iter
from pkl_dg.calibration import Calibration, estimate_calibration


def _scene(n=256, peak=100.0, seed=0):
    """Blurred filaments and spots, with a dark quarter (no photons)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, n))
    r, c = rng.integers(0, n, (2, 60))
    x[r, c] = 1.0
    yy, xx = np.mgrid[:n, :n]
    for _ in range(8):
        x += (np.sin(xx / rng.uniform(5, 20) + yy / rng.uniform(8, 40) + rng.uniform(0, 6))
              > 0.95) * 0.3
    x = ndimage.gaussian_filter(x, 2.0)
    x = x / x.max() * peak
    x[: n // 4] = 0
    return x


@pytest.mark.parametrize("gain", [0.2, 1.0, 5.0, 50.0])
@pytest.mark.parametrize("offset,read_noise", [(0.0, 0.0), (100.0, 2.0), (1000.0, 5.0)])
def test_calibration_recovered_from_one_image(gain, offset, read_noise):
    rng = np.random.default_rng(int(gain * 10 + offset + read_noise))
    photons = _scene(peak=100.0 * max(gain, 1.0))
    electrons = rng.poisson(photons) + rng.normal(0, read_noise, photons.shape)
    adu = offset + electrons / gain
    cal = estimate_calibration(adu)
    assert cal.source == "estimated"
    assert cal.gain == pytest.approx(gain, rel=0.10)
    # offset within 10 %, or within one photon's worth of ADU when it is 0
    assert abs(cal.offset - offset) <= max(0.1 * offset, 1.0 / gain)
    assert abs(cal.read_noise - read_noise) <= max(0.1 * read_noise, 0.5)


def test_calibration_refuses_noise_free_data():
    flat = np.tile(np.linspace(0, 100, 64), (64, 1))
    with pytest.raises(ValueError, match="by hand"):
        estimate_calibration(flat)


def test_a_constant_image_is_refused_with_a_message_not_a_numpy_error():
    # replayed from the hyperstack cases' ground-truth planes: one intensity level gave one
    # bin edge, and numpy's bincount failed on a bin index of −1
    with pytest.raises(ValueError, match="too flat"):
        estimate_calibration(np.full((64, 64), 5.0))


@pytest.mark.parametrize("threads", [1, 2])
def test_the_estimate_is_the_same_on_one_thread_and_on_two(threads):
    """With two or more threads the estimate's independent pieces (filters, the dark level,
    half the bins) run on a helper thread: the numbers must not change, nor the errors."""
    import torch

    rng = np.random.default_rng(5)
    adu = 100.0 + rng.poisson(_scene(peak=300.0)) / 2.0 + rng.normal(0, 1.5, (256, 256))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ref = estimate_calibration(adu)
        torch.set_num_threads(threads)
        assert estimate_calibration(adu) == ref
        with pytest.raises(ValueError, match="too flat"):
            estimate_calibration(np.full((64, 64), 5.0))
        with pytest.raises(ValueError, match="by hand"):
            estimate_calibration(np.tile(np.linspace(0, 100, 64), (64, 1)))
    finally:
        torch.set_num_threads(before)


def test_quantiles_read_off_a_sorted_array_are_numpys():
    from pkl_dg.calibration import sorted_quantiles

    rng = np.random.default_rng(0)
    for n in (1, 2, 17, 1000, 248_000):
        v = np.sort(np.round(rng.random(n) * 1e3))  # with ties
        for q in (np.linspace(0, 1, 17), np.array([0.0, 0.5, 0.999, 1.0])):
            assert np.array_equal(sorted_quantiles(v, q), np.quantile(v, q))


def test_calibration_input_not_modified_and_photons():
    img = np.full((4, 4), 110.0, np.float32)
    img.setflags(write=False)
    ph = Calibration(gain=2.0, offset=100.0, read_noise=0.0).to_photons(img)
    assert ph.dtype == np.float32 and np.allclose(ph, 20.0)


@pytest.mark.parametrize("method", ["rl", "pkl"])
def test_scale_of_the_data_does_not_decide_the_result(method):
    """Counts, ×1000, and ÷65535 (img_as_float of uint16) restore alike, up to that scale,
    with nothing given but the PSF."""
    rng = np.random.default_rng(3)
    counts = rng.poisson(_scene(n=96, peak=60.0, seed=3) + 2.0).astype(np.float32)
    kw = dict(method=method, psf_sigma=1.5, steps=3, samples=1, seed=0)
    ref = restore_iter(counts, **kw).finish()
    assert ref.metadata["calibration"]["source"] == "estimated"
    # the camera fields of the settings (at their defaults) are said to have had no effect
    assert {"offset", "gain", "read_noise"} <= set(ref.metadata["settings_without_effect"])
    peak = float(ref.image.max())
    for factor in (1000.0, 1 / 65535):
        out = restore(counts * np.float32(factor), **kw)
        # the network runs in bf16 where the CPU has bf16 kernels (the default precision):
        # its rounding (2⁻⁸ relative) moves single pixels of a PKL result by up to ~0.3 %
        # of the peak when the photon values differ in their last float32 digits
        assert np.abs(out - ref.image).max() <= 5e-3 * peak
        assert np.sqrt(np.mean((out - ref.image) ** 2)) <= 1e-3 * peak
    # in float32 the scale leaves nothing but float32 rounding
    exact = dict(kw, precision="fp32")
    ref32 = restore(counts, **exact)
    for factor in (1000.0, 1 / 65535):
        out = restore(counts * np.float32(factor), **exact)
        assert np.abs(out - ref32).max() <= 1e-5 * float(ref32.max())


def test_explicit_camera_values_mean_manual_calibration(scene):
    _, y, _, b = scene
    res = restore_iter(y / 0.5 + 100, method="rl", rl_iterations=3, gain=0.5,
                       offset=100.0, background=b).finish()
    assert res.settings.calibration == "manual"
    assert res.metadata["calibration"] == {"gain": 0.5, "offset": 100.0, "read_noise": 0.0,
                                           "source": "given"}
    assert not {"offset", "gain"} & set(res.metadata["settings_without_effect"])


def test_cli_gain_flag_means_manual_calibration():
    from pkl_dg.cli import build_parser
    from pkl_dg.cli.restore import settings_from_args

    p = build_parser()
    s = settings_from_args(p.parse_args(["restore", "a.tif", "-o", "b.tif", "--gain", "2"]))
    assert (s.calibration, s.gain) == ("manual", 2.0)
    s = settings_from_args(p.parse_args(["restore", "a.tif", "-o", "b.tif"]))
    assert s.calibration == "auto"


def test_case_16_normalised_float_restores_like_counts():
    """Case 16: the same Poisson image as uint16 counts, ÷65535 and min–max scaled to [0, 1]
    restores alike (before: PKL returned about the input for the float versions)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from cases import read

    from pkl_dg.metrics import care_scores

    gt = read("16_normalised_float", "gt.tif")
    kw = dict(psf_sigma=2.0, samples=2, seed=0)
    scores = {}
    for name in ("counts_u16.tif", "img_as_float.tif", "minmax.tif"):
        img = read("16_normalised_float", name)
        scores[name] = care_scores(restore(img, **kw), gt)["psnr"]
    counts = scores["counts_u16.tif"]
    assert counts > care_scores(read("16_normalised_float", "counts_u16.tif"), gt)["psnr"] + 2
    assert abs(scores["img_as_float.tif"] - counts) < 0.1, scores
    assert abs(scores["minmax.tif"] - counts) < 0.1, scores


def test_truncated_normal_variance_matches_scipy():
    from scipy.stats import truncnorm

    from pkl_dg.calibration import _truncated_normal_variance

    for k in (1.0, 2.5, 3.5, 5.0):
        assert _truncated_normal_variance(k) == pytest.approx(truncnorm.var(-k, k), rel=1e-12)

"""Restoring data as users give them: no calibration, 8-bit or float files, inexact PSFs.

The self-contained tests build their inputs here; the W2S test reads a real pair from
``../shared/realdata`` and skips when it is absent."""

import numpy as np
from scipy import ndimage

from pkl_dg import restore, restore_iter
from pkl_dg.metrics import care_scores

DELTA = np.ones((1, 1), np.float32)


def _cells(n=96, seed=0):
    """Smooth blobs and thin bright lines (max 1)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, n))
    yy, xx = np.mgrid[:n, :n]
    for _ in range(6):
        cy, cx, r = rng.uniform(10, n - 10), rng.uniform(10, n - 10), rng.uniform(5, 12)
        x += 0.5 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    for _ in range(5):
        a, b = rng.uniform(0, np.pi), rng.uniform(0, n)
        d = np.abs((xx - n / 2) * np.sin(a) - (yy - n / 2) * np.cos(a) + b - n / 2)
        x += 1.0 * (d < 0.8)
    x = ndimage.gaussian_filter(x, 1.0)
    return x / x.max()


def _as_8bit(counts):
    """Min–max stretched to 8 bit, as the W2S files (and many exported images) are."""
    c = counts.astype(np.float64)
    return np.round((c - c.min()) / (c.max() - c.min()) * 255).astype(np.uint8)


def test_delta_psf_denoises_an_8bit_noisy_frame():
    """PSF = one pixel: Richardson–Lucy returns the input; the prior must denoise it."""
    gt = _cells()
    rng = np.random.default_rng(1)
    frame = _as_8bit(rng.poisson(gt * 12 + 1))
    res = restore_iter(frame, psf=DELTA, seed=0).finish()
    gain = care_scores(res.image, gt)["psnr"] - care_scores(frame, gt)["psnr"]
    assert res.metadata["calibration"]["source"] == "estimated"
    assert gain >= 2.0, gain
    rl = restore(frame, psf=DELTA, method="rl")
    assert abs(care_scores(rl, gt)["psnr"] - care_scores(frame, gt)["psnr"]) < 0.1


def test_too_wide_psf_does_not_make_pkl_worse_than_rl30():
    """Data blurred with σ 1.5, restored with σ 2 (the usual, slightly wrong PSF)."""
    from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf
    import torch

    gt = _cells(seed=2)
    fm = ForwardModel(PSFConvolution(gaussian_psf(1.5)), 3.0)
    with torch.inference_mode():
        mu = fm.mean(torch.from_numpy((gt * 80).astype(np.float32)))
    y = (torch.poisson(mu, generator=torch.Generator().manual_seed(3)).numpy() + 100)
    y = y.astype(np.uint16)  # camera counts with an offset, no calibration given
    pkl = restore(y, psf_sigma=2.0, seed=0, samples=2)
    rl30 = restore(y, psf_sigma=2.0, method="rl", rl_iterations=30)
    assert care_scores(pkl, gt)["psnr"] >= care_scores(rl30, gt)["psnr"]


def test_w2s_crop_gains_2db(realdata):
    import tifffile

    noisy = tifffile.imread(realdata / "w2s" / "noisy" / "011_0.tif")[128:256, 128:256]
    clean = tifffile.imread(realdata / "w2s" / "clean" / "011_0.tif")[128:256, 128:256]
    out = restore(noisy, psf=DELTA, seed=0)
    gain = care_scores(out, clean)["psnr"] - care_scores(noisy, clean)["psnr"]
    assert gain >= 2.0, gain


def test_saturated_pixels_stay_in_the_fit_for_a_one_pixel_psf():
    """Pure denoising: a clipped pixel has no neighbour that informs it, so it keeps its
    clipped value in the fit (a lower bound) instead of leaving a hole for the prior."""
    import warnings

    gt = _cells(seed=4)
    rng = np.random.default_rng(5)
    frame = np.clip(rng.poisson(gt * 30 + 1), 0, 20).astype(np.uint8)  # clipped at 20…
    frame[frame == 20] = 255  # …and stored at the dtype's maximum
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = restore_iter(frame, psf=DELTA, method="rl").finish()
    sat = res.metadata["saturated"]
    assert sat["pixels"] == int((frame == 255).sum()) > 0
    assert "kept in the data fit" in sat["handling"]
    assert any("kept in the data fit" in str(w.message) for w in caught)
    # RL with a one-pixel PSF returns the data, clipped pixels included
    photons = (frame.astype(np.float32) - res.metadata["calibration"]["offset"]) \
        * res.metadata["calibration"]["gain"]
    hot = frame == 255
    assert np.allclose(res.image[hot], photons[hot], rtol=0.05)


def test_realdata_bench_smoke_and_report(realdata, tmp_path):
    import json

    from pkl_dg.cli import main

    out = tmp_path / "real.json"
    assert main(["bench", "quality", "--section", "real", "--smoke", "--json", str(out),
                 "--realdata", str(realdata), "--threads", "1"]) == 0
    data = json.loads(out.read_text())
    assert data["kind"] == "realdata" and len(data["records"]) == 7  # 2 BioSR, 4 sim, 1 W2S
    from pkl_dg.bench.realdata import group_means, realdata_section

    means = group_means(data["records"])
    assert means["w2s"]["count"] == 1 and means["deconvolution"]["count"] == 6
    text = "\n".join(realdata_section(data))
    assert "| W2S 011_0 |" in text and "| deconvolution | 6 |" in text
    # the steps × samples grid is added to the same file and rendered after the means
    assert main(["bench", "quality", "--section", "settings", "--smoke", "--json", str(out),
                 "--realdata", str(realdata), "--threads", "1"]) == 0
    grid = json.loads(out.read_text())["settings_grid"]
    assert [r["steps"] for r in grid["rows"]] == [2, 2] and len(grid["items"]) == 1
    assert all(np.isfinite(r["mean_psnr"]) for r in grid["rows"])
    text = "\n".join(realdata_section(json.loads(out.read_text())))
    assert "### What PKL's cost buys" in text and "Fastest within 0.1 dB" in text

"""Issue 13, items 1–2: the misfit is finite for any non-negative input, and methods that
draw no samples write no uncertainty output."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from cases import case_dir, read
from pkl_dg.guidance import get_likelihood
from pkl_dg.imageio import read_metadata
from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf
from pkl_dg.restoration import restore_iter


def sparse_on_zeros(n: int = 96) -> np.ndarray:
    """uint16 counts: a few bright spots on a background of exact zeros."""
    img = np.zeros((n, n), np.float32)
    img[20, 30] = img[60, 70] = img[40, 50] = 400.0
    fm = ForwardModel(PSFConvolution(gaussian_psf(2.0)), 0.0)
    mu = fm.mean(torch.from_numpy(img))
    y = torch.poisson(mu, generator=torch.Generator().manual_seed(0)).numpy()
    return y.astype(np.uint16)


def test_blur_rounds_below_zero_yet_every_nll_is_finite():
    y = torch.from_numpy(sparse_on_zeros().astype(np.float32))
    conv = PSFConvolution(gaussian_psf(2.0))
    x = y.clone()
    assert float(conv.A(x).min()) < 0  # the condition that made log(μ) NaN
    fm = ForwardModel(conv, 0.0)
    assert float(fm.mean(x).min()) == 0.0
    for name in ("pkl", "anscombe", "l2"):
        lik = get_likelihood(name)
        assert torch.isfinite(lik.nll(x, y, fm)), name
        assert torch.isfinite(lik.grad(x, y, fm)).all(), name
    # and on all-zero data and an all-zero estimate
    z = torch.zeros_like(y)
    for name in ("pkl", "anscombe", "l2"):
        assert torch.isfinite(get_likelihood(name).nll(z, z, fm)), name


@pytest.mark.parametrize("method", ["rl", "pkl"])
def test_every_step_misfit_is_finite_on_zero_background(method, constant_denoiser):
    frames = []
    restore_iter(sparse_on_zeros(), method=method, rl_iterations=15, steps=6,
                 samples=2, psf_sigma=2.0, denoiser=constant_denoiser).finish(frames.append)
    # RL reads the misfit out only on frames that can be shown (None on the others)
    shown = [f.nll for f in frames if f.nll is not None]
    assert frames[-1].nll is not None and all(np.isfinite(shown))
    assert all(np.isfinite(f.image).all() for f in frames)


def test_case_01_zero_background_misfit_finite(constant_denoiser):
    y = read("01_zero_background", "input.tif")
    for method in ("rl", "pkl"):
        frames = []
        restore_iter(y, method=method, rl_iterations=30, steps=8,
                     denoiser=constant_denoiser).finish(frames.append)
        nll = [f.nll for f in frames if f.nll is not None]
        assert frames[-1].nll is not None and all(np.isfinite(nll)), (method, nll)


def _cli_restore(tmp_path, src, *extra):
    from pkl_dg.cli import main

    out = tmp_path / "out.tif"
    assert main(["restore", str(src), "-o", str(out), "--quiet", "--threads", "1",
                 *extra]) == 0
    return out


def test_rl_writes_no_std_file_and_says_why(tmp_path):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, sparse_on_zeros())
    out = _cli_restore(tmp_path, src, "--method", "rl", "--rl-iterations", "3",
                       "--samples", "4")
    assert not (tmp_path / "out_std.tif").exists()
    meta = read_metadata(out)
    assert "std_file" not in meta
    assert meta["posterior_std"].startswith("none: Richardson–Lucy")


def test_sampling_method_still_writes_std(tmp_path, constant_denoiser, monkeypatch):
    monkeypatch.setattr("pkl_dg.diffusion.model_io.load_model",
                        lambda path, device="cpu": (constant_denoiser, {"name": "test"}))
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, sparse_on_zeros())
    out = _cli_restore(tmp_path, src, "--steps", "2", "--samples", "2")
    assert (tmp_path / "out_std.tif").exists()
    assert read_metadata(out)["posterior_std"].startswith("per-pixel standard deviation")


def test_case_01_rl_default_samples_no_std(tmp_path):
    src = case_dir("01_zero_background") / "input.tif"
    out = _cli_restore(tmp_path, src, "--method", "rl", "--rl-iterations", "5")
    assert not (tmp_path / "out_std.tif").exists()
    assert "Richardson–Lucy" in read_metadata(out)["posterior_std"]
    assert np.isfinite(tifffile.imread(out)).all()


def test_restored_photons_are_never_negative_after_the_final_pass():
    """The final pass sets the posterior mean (clamped at 0 photons) and moves every sample
    with it; the result is that mean, not the samples averaged again (which rounds to
    −1e-5 where the mean is 0)."""
    frames = []
    result = restore_iter(sparse_on_zeros(), psf_sigma=2.0, steps=4, samples=4, seed=1,
                          threads=1).finish(frames.append)
    last = frames[-1]
    assert last.index == last.total and result.settings.final_noise > 0
    assert result.image.min() == 0.0 and (result.image == 0).sum() > 100
    assert np.array_equal(result.image, last.image)

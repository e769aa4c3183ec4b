"""The shared pieces of the benchmarks: the measurement simulator, the RL oracle, the
network timer, and the prior's validation built on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pkl_dg.bench.protocol import psnr, rl_iterates, rl_oracle
from pkl_dg.bench.simulate import simulate_measurement
from pkl_dg.metrics import care_scores, normalize_percentile
from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf


def _dots(n: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    obj = np.zeros((n, n), dtype=np.float32)
    obj[rng.integers(4, n - 4, 15), rng.integers(4, n - 4, 15)] = 1.0
    return obj


def test_simulated_measurement_is_poisson_around_the_forward_model():
    obj, psf = _dots(), gaussian_psf(2.0)
    y = simulate_measurement(obj * 4, psf, background=2.0, peak=500.0, seed=3)
    assert y.dtype == np.float32 and y.shape == obj.shape
    assert np.array_equal(y, np.round(y)) and y.min() >= 0
    with torch.inference_mode():
        mu = ForwardModel(PSFConvolution(psf), 2.0).mean(torch.from_numpy(obj * 500)).numpy()
    # Poisson: E[y] = μ, Var[y] = μ (the object's scale does not matter with a peak)
    assert abs(float((y - mu).sum())) < 4 * np.sqrt(mu.sum())
    assert np.mean((y - mu) ** 2 / mu) == pytest.approx(1.0, abs=0.2)
    assert np.array_equal(y, simulate_measurement(obj, psf, background=2.0, peak=500.0, seed=3))
    assert not np.array_equal(y, simulate_measurement(obj, psf, background=2.0, peak=500.0,
                                                      seed=4))


def test_simulator_refuses_to_scale_an_empty_object():
    with pytest.raises(ValueError, match="maximum"):
        simulate_measurement(np.zeros((8, 8)), gaussian_psf(1.0), background=1.0, peak=10.0,
                             seed=0)


def test_rl_oracle_scores_only_the_asked_iterations_and_tracks_ssim():
    obj, psf = _dots(), gaussian_psf(2.0)
    y = simulate_measurement(obj, psf, background=2.0, peak=30.0, seed=0)
    every = [care_scores(x.copy(), obj) for x in rl_iterates(y, psf, 2.0, 12)]
    best = rl_oracle(rl_iterates(y, psf, 2.0, 12), obj, score_at=(2, 5, 12), with_ssim=True)
    at = {i: every[i - 1] for i in (2, 5, 12)}
    assert best.iteration == max(at, key=lambda i: at[i]["psnr"])
    assert best.psnr == pytest.approx(at[best.iteration]["psnr"])
    assert best.ssim_iteration == max(at, key=lambda i: at[i]["ssim"])
    assert best.ssim == pytest.approx(at[best.ssim_iteration]["ssim"])
    assert psnr(best.image, normalize_percentile(obj)) == pytest.approx(best.psnr)
    with pytest.raises(ValueError, match="no iterate"):
        rl_oracle(rl_iterates(y, psf, 2.0, 3), obj, score_at=(10,))


def test_validation_rl_best_reports_both_oracles():
    from pkl_dg.bench.validate import RL_ITERATIONS, rl_best

    obj, psf = _dots(32), gaussian_psf(2.0)
    y = simulate_measurement(obj, psf, background=2.0, peak=30.0, seed=1)
    best = rl_best(y, obj, psf, 2.0)
    assert best["psnr_iter"] in RL_ITERATIONS and best["ssim_iter"] in RL_ITERATIONS
    assert best["psnr"] > care_scores(y, obj)["psnr"]


def test_forward_timer_and_model_card_table(capsys):
    from pkl_dg.bench.common import SMOKE_UNET
    from pkl_dg.bench.network import forward_ms, main
    from pkl_dg.diffusion.unet import UNet

    net = UNet(SMOKE_UNET).eval()
    assert forward_ms(net, 32, "fp32", 1) > 0 and forward_ms(net, 32, "bf16", 1) > 0
    with pytest.raises(ValueError, match="precision"):
        forward_ms(net, 32, "fp16", 1)
    before = torch.get_num_threads()
    try:
        assert main(["--widths", "8", "--sizes", "32", "--repeats", "1", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "| width | params | size | fp32 ms | bf16 ms |" in out and "| 8 |" in out

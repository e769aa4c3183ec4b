"""The Poisson proximal data step and the automatic Richardson–Lucy stop."""

import numpy as np
import pytest
import torch

from pkl_dg.guidance.proximal import poisson_proximal
from pkl_dg.guidance.stopping import MAX_ITERATIONS, AutoStop, signal_region
from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf
from pkl_dg.richardson_lucy import richardson_lucy_iter, rl_iterates


def _objective(x, x_prior, y, fm, tau):
    mu = fm.mean(x) + fm.read_noise_var
    ys = y + fm.read_noise_var
    return float((mu - torch.special.xlogy(ys, mu)).sum() + ((x - x_prior) ** 2).sum() / (2 * tau ** 2))


def test_delta_psf_one_iteration_is_the_exact_proximal_point():
    g = torch.Generator().manual_seed(0)
    x_prior = torch.rand(1, 1, 16, 16, generator=g) * 20 + 1
    y = torch.poisson(torch.full((16, 16), 8.0), generator=g)
    fm = ForwardModel(PSFConvolution(np.ones((1, 1), np.float32)), 0.0)
    tau = 3.0
    x = poisson_proximal(x_prior, y, fm, tau, iterations=1, floor=1e-9)
    # stationarity of Σ x − y log x + (x − x̂0)²/(2τ²): 1 − y/x + (x − x̂0)/τ² = 0
    resid = 1 - y / x + (x - x_prior) / tau ** 2
    assert resid.abs().max() < 1e-4
    # limits: τ = 0 is the prior, τ → ∞ is the maximum-likelihood fit (the data)
    assert torch.equal(poisson_proximal(x_prior, y, fm, 0.0), x_prior)
    far = poisson_proximal(x_prior, y, fm, 1e4, iterations=1, floor=1e-9)
    assert torch.allclose(far, y.expand_as(far).clamp(min=1e-9), atol=1e-3)


def test_proximal_iterations_lower_the_objective_with_a_blur():
    g = torch.Generator().manual_seed(1)
    obj = torch.zeros(32, 32)
    obj[8:24, 15:17] = 40.0
    fm = ForwardModel(PSFConvolution(gaussian_psf(1.5)), 2.0, 1.0)
    y = torch.poisson(fm.mean(obj), generator=g)
    x_prior = torch.full((1, 1, 32, 32), 5.0)
    tau = 4.0
    values = [_objective(x_prior[0, 0], x_prior[0, 0], y, fm, tau)]
    x = x_prior
    for _ in range(6):
        x = poisson_proximal(x_prior, y, fm, tau, iterations=1, x_init=x)
        values.append(_objective(x[0, 0], x_prior[0, 0], y, fm, tau))
    assert all(b <= a + 1e-3 for a, b in zip(values, values[1:])), values
    assert values[-1] < values[0] - 100
    # τ → ∞: one iteration is one Richardson–Lucy iteration
    rl = next(richardson_lucy_iter(y, fm, 1, x0=x_prior[0, 0]))
    one = poisson_proximal(x_prior, y, fm, 1e5, iterations=1)
    assert torch.allclose(one[0, 0], rl, rtol=1e-3, atol=1e-3)


def test_proximal_step_finite_on_exact_zeros():
    y = torch.zeros(24, 24)
    y[10:14, 10:14] = 5.0
    fm = ForwardModel(PSFConvolution(gaussian_psf(2.0)), 0.0)
    x = poisson_proximal(torch.zeros(2, 1, 24, 24), y, fm, 2.0, iterations=5)
    assert torch.isfinite(x).all() and (x >= 0).all()
    with pytest.raises(ValueError, match="τ"):
        poisson_proximal(torch.zeros(1, 1, 8, 8), torch.zeros(8, 8), fm, -1.0)


def _auto_run(y, fm, cap=MAX_ITERATIONS):
    rule = AutoStop(y, fm)
    ratios = []
    for it in rl_iterates(y, fm, cap, stop=lambda it: (rule(it), ratios.append(rule.ratio))[0]):
        pass
    return rule, ratios


def test_rl_auto_stops_at_the_noise_level_on_photon_counts(scene):
    x, y, psf, b = scene
    fm = ForwardModel(PSFConvolution(psf), b)
    rule, ratios = _auto_run(torch.from_numpy(y), fm)
    assert rule.reason == "noise level" and 3 <= rule.k < 100  # the rule, not the cap
    assert ratios[-1] <= 1.0 < ratios[-2]
    assert len(ratios) == rule.k


def test_rl_auto_stops_when_the_model_is_wrong():
    """A PSF too wide for the data: the deviance levels off above the noise level and the
    stall rule ends the run long before the cap."""
    g = torch.Generator().manual_seed(2)
    obj = torch.zeros(48, 48)
    obj[10:38, 23:25] = 300.0
    obj[20, 5:43] = 300.0
    y = torch.poisson(ForwardModel(PSFConvolution(gaussian_psf(1.2)), 5.0).mean(obj),
                      generator=g)
    fm = ForwardModel(PSFConvolution(gaussian_psf(2.5)), 5.0)
    rule, ratios = _auto_run(y, fm)
    assert rule.reason == "stalled" and ratios[-1] > 1.0 and rule.k < MAX_ITERATIONS
    assert ratios[-2] - ratios[-1] < 0.005 * (ratios[-1] - 1)


def _sparse_scene(seed):
    """Three hollow bars on a dark field (~10 % of the area), 20 photons peak."""
    x = np.zeros((128, 128))
    for r0 in (20, 52, 84):
        x[r0:r0 + 12, 16:112] = 20.0
        x[r0 + 3:r0 + 9, 19:109] = 0.0
    fm = ForwardModel(PSFConvolution(torch.as_tensor(gaussian_psf(2.0))), 0.5)
    y = np.random.default_rng(seed).poisson(fm.mean(torch.as_tensor(x)).numpy())
    return torch.as_tensor(x), torch.as_tensor(y.astype(np.float64)), fm


def test_rl_auto_is_not_stopped_early_by_a_dark_background():
    """The dark field is fitted (and over-fitted) in a few iterations; judged over all
    pixels the deviance then reaches its expectation while the bars are still blurred. The
    rule judges the brightest quarter (measured: 1.1 dB below the best iteration over all
    pixels, 0.3 dB with the signal region)."""
    gaps = []
    for seed in range(3):
        x, y, fm = _sparse_scene(seed)
        rule, _ = _auto_run(y, fm, cap=150)
        mse = [float(((it.x - x) ** 2).mean()) for it in rl_iterates(y, fm, 150)]
        gaps.append(10 * np.log10(mse[rule.k - 1] / min(mse)))
        assert rule.reason == "noise level"
    assert np.mean(gaps) < 0.5, gaps


def test_signal_region_is_the_brightest_quarter_of_the_fitted_pixels():
    mu = torch.arange(400.0).reshape(20, 20)
    assert signal_region(mu).float().mean() == pytest.approx(0.25, abs=0.01)
    fit = torch.ones(20, 20, dtype=torch.bool)
    fit[15:] = False  # the brightest rows are left out of the fit (e.g. saturated)
    region = signal_region(mu, fit)
    assert not region[15:].any()
    assert region.sum() == pytest.approx(0.25 * fit.sum(), abs=3)


def test_rl_auto_fits_a_bright_image_below_the_noise_level():
    """A fit resolving much detail may go below the expected deviance by the degrees of
    freedom it resolves: from 100 photons peak the target is 0.95 (as for the sampler's
    noise-level stop). On the plugin's sample (≈140 photons peak, taken as photon counts) the
    stop at 1.0 ends 1.5 dB below the best iteration (17 vs 64 iterations); at the
    brightness's target 0.7 dB below (27 iterations)."""
    from pkl_dg.guidance.steps import auto_discrepancy
    from pkl_dg.guidance.stopping import peak_photons
    from pkl_dg.inputs import estimate_background
    from pkl_dg.metrics import care_scores
    from pkl_dg.napari.sample_data import make_sample

    y, gt, _ = make_sample()
    y = torch.as_tensor(y, dtype=torch.float32)
    op = PSFConvolution(gaussian_psf(2.0))
    fm = ForwardModel(op, estimate_background(y, op))
    assert peak_photons(y, fm) > 100
    rule, ratios = _auto_run(y, fm, cap=120)
    assert rule.target == auto_discrepancy(peak_photons(y, fm)) < 1.0
    assert rule.reason == "noise level" and ratios[-1] <= rule.target < ratios[-2]
    psnr = [care_scores(it.x.numpy(), gt)["psnr"] for it in rl_iterates(y, fm, 120)]
    assert max(psnr) - psnr[rule.k - 1] < 1.0, (rule.k, int(np.argmax(psnr)) + 1)


def _proximal_reference(x_prior, y, fm, tau, iterations, floor=1e-6, x_init=None):
    """The majorise–minimise iteration of the module docstring, written out plainly."""
    s2 = fm.read_noise_var
    ys = (y + s2).clamp(min=0)
    n = fm.adjoint_ones(x_prior).clamp(min=1e-6)
    nt2 = n * tau * tau
    c = nt2 - x_prior
    x = (x_prior if x_init is None else x_init).clamp(min=floor)
    for _ in range(iterations):
        mu = (fm.mean(x) + s2).clamp(min=floor)
        x_em = (x * fm.A_adjoint(ys / mu) / n).clamp(min=0)
        root = torch.sqrt(c * c + 4 * nt2 * x_em)
        x = torch.where(c > 0, 2 * nt2 * x_em / (root + c).clamp(min=1e-6), (root - c) / 2)
        x = x.clamp(min=floor)
    return x


@pytest.mark.parametrize("background", ["scalar", "map"])
def test_proximal_in_place_loop_equals_the_plain_iteration(background):
    """The in-place loop (workspace buffers, the constant on the zero-frequency bin) gives
    the plain iteration's result, per sample τ, with read noise and a background map."""
    g = torch.Generator().manual_seed(3)
    b = 2.0 if background == "scalar" else torch.rand(40, 36, generator=g) * 3
    fm = ForwardModel(PSFConvolution(gaussian_psf(1.5)), b, 4.0)
    y = torch.poisson(torch.rand(40, 36, generator=g) * 50 + 2, generator=g)
    x_prior = torch.rand(3, 1, 40, 36, generator=g) * 60
    tau = torch.tensor([0.5, 5.0, 50.0]).reshape(3, 1, 1, 1)
    before = x_prior.clone()
    got = poisson_proximal(x_prior, y, fm, tau, iterations=7)
    want = _proximal_reference(x_prior, y, fm, tau, 7)
    assert torch.equal(x_prior, before)  # the input is never modified
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)
    assert float((got - x_prior).abs().max()) > 1  # and the step did move the estimate


def _accelerated_reference(x_prior, y, fm, tau, iterations, alpha_max, floor=1e-6):
    """Biggs–Andrews on the plain iteration, one sample at a time, written out plainly."""
    out = []
    for i in range(x_prior.shape[0]):
        xp, t = x_prior[i:i + 1], tau[i:i + 1]
        x, prev, g, g_prev = xp.clamp(min=floor), None, None, None
        for _ in range(iterations):
            base = x
            if g_prev is not None:
                alpha = float((g * g_prev).sum() / ((g_prev * g_prev).sum() + 1e-30))
                alpha = min(max(alpha, 0.0), alpha_max)
                base = (x + alpha * (x - prev)).clamp(min=floor)
            new = _proximal_reference(xp, y, fm, t, 1, x_init=base, floor=floor)
            g_prev, g = g, new - base
            prev, x = x, new
        out.append(x)
    return torch.cat(out)


def test_accelerated_proximal_is_biggs_andrews_per_sample_and_gets_further():
    """Extrapolation per sample (each its own α), as written out plainly; on a blurred
    problem it reaches a lower objective than as many plain iterations."""
    from pkl_dg.guidance.proximal import ACCEL_ALPHA_MAX

    g = torch.Generator().manual_seed(5)
    obj = torch.zeros(40, 36)
    obj[10:30, 16:18] = 60.0
    obj[20:22, 5:30] = 30.0
    fm = ForwardModel(PSFConvolution(gaussian_psf(2.0)), 2.0, 1.0)
    y = torch.poisson(fm.mean(obj), generator=g)
    x_prior = torch.rand(3, 1, 40, 36, generator=g) * 10 + 1
    tau = torch.tensor([1.0, 10.0, 100.0]).reshape(3, 1, 1, 1)
    before = x_prior.clone()
    got = poisson_proximal(x_prior, y, fm, tau, iterations=6, accelerate=True)
    want = _accelerated_reference(x_prior, y, fm, tau, 6, ACCEL_ALPHA_MAX)
    assert torch.equal(x_prior, before)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)
    plain = poisson_proximal(x_prior, y, fm, tau, iterations=6)
    assert not torch.allclose(got, plain, atol=1e-2)  # the extrapolation did act
    for i in (1, 2):  # where the data term leads, the accelerated iterate is further on
        args = (x_prior[i, 0], y, fm, float(tau[i]))
        assert _objective(got[i, 0], *args) < _objective(plain[i, 0], *args) - 1
    # two iterations have no extrapolation yet: the plain ones
    assert torch.equal(poisson_proximal(x_prior, y, fm, tau, iterations=2, accelerate=True),
                       poisson_proximal(x_prior, y, fm, tau, iterations=2))


def test_the_automatic_data_budget_is_accelerated_and_halved_from_four_per_step():
    from pkl_dg.guidance.steps import proximal_sub_iterations

    assert proximal_sub_iterations(3, 10) == (1, False)  # W2S, C. elegans
    assert proximal_sub_iterations(28, 10) == (3, False)  # the flowdec bars
    assert proximal_sub_iterations(31, 10) == (3, True)  # 4 plain: at least 3 accelerated
    assert proximal_sub_iterations(108, 10) == (6, True)  # BioSR F-actin, σ 2
    assert proximal_sub_iterations(200, 10) == (10, True)
    assert proximal_sub_iterations(500, 2) == (15, True)  # 30 plain at most


def test_a_chunk_takes_its_planes_data_budget():
    """``pkl-dg batch`` chunks share the whole plane's RL count, so they get the plane's
    sub-iterations and acceleration, not their own; an explicit count is never accelerated."""
    from pkl_dg.restoration import PlaneChunk, restore_iter

    y = np.random.default_rng(0).poisson(30.0, (48, 48)).astype(np.float32)
    common = dict(psf_sigma=1.5, steps=2, samples=1, calibration="manual", gain=1.0,
                  offset=0.0, threads=1)
    chunk = PlaneChunk((0, 48, 0, 48), (48, 48), float(y.mean()), 40.0,
                       data_budget=(120, "the plane's"))
    meta = restore_iter(y, chunk=chunk, **common).finish().metadata
    assert (meta["sub_iterations"], meta["sub_iterations_accelerated"]) == (15, True)
    meta = restore_iter(y, chunk=chunk, sub_iterations=12, **common).finish().metadata
    assert (meta["sub_iterations"], meta["sub_iterations_accelerated"]) == (12, False)


def test_proximal_samples_in_two_halves_equal_one_thread(monkeypatch):
    """With two threads the samples go in two halves, one on a helper thread; each sample's
    result (its own y, τ, start and extrapolation) is the one-thread result."""
    import pkl_dg.guidance.proximal as proximal
    from pkl_dg.threads import in_two, torch_threads

    halves = []
    monkeypatch.setattr(proximal, "in_two", lambda fn, items: halves.append(items) or
                        in_two(fn, items))
    g = torch.Generator().manual_seed(7)
    fm = ForwardModel(PSFConvolution(gaussian_psf(1.5)), 2.0, 1.0)
    y = torch.poisson(torch.rand(3, 1, 40, 36, generator=g) * 50 + 2, generator=g)
    x_prior = torch.rand(3, 1, 40, 36, generator=g) * 60
    start = torch.rand(3, 1, 40, 36, generator=g) * 60
    tau = torch.tensor([0.5, 5.0, 50.0]).reshape(3, 1, 1, 1)
    args = (x_prior, y, fm, tau, 5)
    with torch_threads(1):
        want = poisson_proximal(*args, x_init=start, accelerate=True)
    assert halves == []
    with torch_threads(2):
        got = poisson_proximal(*args, x_init=start, accelerate=True)
    assert [(h.start, h.stop) for h in halves[0]] == [(0, 2), (2, 3)]
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4)
    # one measurement for all samples (broadcast, not cut) and a number for τ
    with torch_threads(1):
        want = poisson_proximal(x_prior, y[0, 0], fm, 5.0, 3)
    with torch_threads(2):
        got = poisson_proximal(x_prior, y[0, 0], fm, 5.0, 3)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4)

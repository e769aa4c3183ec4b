import numpy as np
import pytest
import torch

from pkl_dg.guidance import LIKELIHOODS, GuidanceStep, get_likelihood, ramp_weight
from pkl_dg.guidance.steps import auto_sub_iterations
from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf
from pkl_dg.richardson_lucy import richardson_lucy, richardson_lucy_iter


def _setup(read_noise_var=0.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    fm = ForwardModel(PSFConvolution(gaussian_psf(1.5)), background=2.0,
                      read_noise_var=read_noise_var)
    truth = torch.rand(1, 1, 32, 32, generator=g, dtype=dtype) * 40
    y = torch.poisson(fm.mean(truth), generator=g)
    x = torch.rand(1, 1, 32, 32, generator=g, dtype=dtype) * 40 + 1
    return fm, x, y


@pytest.mark.parametrize("name", list(LIKELIHOODS))
@pytest.mark.parametrize("read_noise_var", [0.0, 4.0])
def test_gradient_equals_autograd(name, read_noise_var):
    fm, x, y = _setup(read_noise_var)
    lik = get_likelihood(name)
    xr = x.clone().requires_grad_(True)
    lik.nll(xr, y, fm).sum().backward()
    analytic = lik.grad(x, y, fm)
    assert torch.allclose(analytic, xr.grad, rtol=1e-8, atol=1e-10)
    # a precomputed forward prediction gives the same gradient
    assert torch.equal(lik.grad(x, y, fm, fm.mean(x)), analytic)


@pytest.mark.parametrize("name", list(LIKELIHOODS))
@pytest.mark.parametrize("rule", ["poisson", "adaptive"])
def test_one_guided_step_lowers_nll(name, rule):
    """The upstream L2 gradient had the wrong sign and climbed its own loss."""
    fm, x, y = _setup()
    lik = get_likelihood(name)
    step = GuidanceStep(lik, rule=rule, lam=0.05 if rule == "adaptive" else 0.5)
    before = lik.nll(x, y, fm)
    after = lik.nll(step(x, y, fm), y, fm)
    assert after < before


def test_poisson_step_at_lambda_one_is_one_rl_iteration():
    fm, x, y = _setup()
    step = GuidanceStep(get_likelihood("pkl"), rule="poisson", lam=1.0, sub_iterations=1)
    ours = step(x, y, fm)
    rl = next(richardson_lucy_iter(y, fm, 1, x0=x))
    assert torch.allclose(ours, rl, rtol=1e-6, atol=1e-9)


def test_default_step_moves_estimate_meaningfully():
    """The upstream normalised step moved a whole image by ≈0.1 counts: inert."""
    from pkl_dg.settings import RestoreSettings

    s = RestoreSettings()
    fm, x, y = _setup(dtype=torch.float32)
    assert s.sub_iterations == 0  # automatic: the smallest automatic k is the hardest case
    # the default proximal step, one iteration, with the prior as unsure as the photons are
    step = GuidanceStep(get_likelihood(s.method), s.step_rule, s.lam, 1)
    moved = step(x, y, fm, prior_std=float(x.max())) - x
    assert moved.abs().mean() > 0.05 * x.mean()  # > 5 % of the mean intensity per pixel
    poisson = GuidanceStep(get_likelihood("pkl"), "poisson", 1.0, auto_sub_iterations(1.0))
    moved = poisson(x, y, fm) - x
    assert moved.abs().mean() > 0.05 * x.mean()
    adaptive = GuidanceStep(get_likelihood("pkl"), "adaptive", 0.1, 1)
    moved = adaptive(x, y, fm) - x
    rel = torch.linalg.vector_norm(moved) / torch.linalg.vector_norm(x)
    assert rel == pytest.approx(0.1, rel=0.2)  # moves by λ·‖x‖ (minus the x ≥ 0 clip)


def test_l2_poisson_step_is_stable_on_bright_sparse_objects():
    """With c = mean(μ) the L2 step overshot bright puncta (μ ≫ mean μ) and oscillated."""
    g = torch.Generator().manual_seed(1)
    fm = ForwardModel(PSFConvolution(gaussian_psf(2.0)), background=2.0)
    truth = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    idx = torch.randint(0, 64, (2, 12), generator=g)
    truth[0, 0, idx[0], idx[1]] = 1000.0
    y = torch.poisson(fm.mean(truth), generator=g)
    lik = get_likelihood("l2")
    step = GuidanceStep(lik, "poisson", 1.0, 1)
    x = torch.full_like(truth, float(y.mean()))
    losses = [float(lik.nll(x, y, fm))]
    for _ in range(60):
        x = step(x, y, fm)
        losses.append(float(lik.nll(x, y, fm)))
    assert all(b <= a * (1 + 1e-9) for a, b in zip(losses, losses[1:]))  # monotone descent
    assert losses[-1] < 0.2 * losses[0]


def test_norms_are_per_sample():
    fm, x, y = _setup()
    batch = torch.cat([x, x * 5])
    step = GuidanceStep(get_likelihood("l2"), "adaptive", 0.1, 1)
    together = step(batch, y, fm)
    alone = torch.cat([step(x, y, fm), step(x * 5, y, fm)])
    assert torch.allclose(together, alone)


def test_ramp_weight():
    assert ramp_weight(999, 1000, 800) == pytest.approx(1 / 200)
    assert ramp_weight(900, 1000, 800) == pytest.approx(0.5)
    assert ramp_weight(800, 1000, 800) == 1.0 and ramp_weight(0, 1000, 800) == 1.0
    assert ramp_weight(900, 1000, 800, "cosine") == pytest.approx(0.5)
    assert ramp_weight(950, 1000, 800, "cosine") < ramp_weight(950, 1000, 800)
    with pytest.raises(ValueError):
        ramp_weight(10, 1000, 800, "exp")


def test_rl_increases_poisson_likelihood_every_iteration():
    fm, _, y = _setup()
    pkl = get_likelihood("pkl")
    prev = None
    for x in richardson_lucy_iter(y, fm, 40):
        nll = float(pkl.nll(x, y, fm))
        if prev is not None:
            assert nll <= prev + 1e-9 * abs(prev)
        prev = nll


def test_rl_sharpens_and_tv_regularises():
    fm, _, y = _setup(dtype=torch.float32)
    plain = richardson_lucy(y, fm, 30)
    tv = richardson_lucy(y, fm, 30, tv_weight=0.01)
    assert torch.isfinite(tv).all() and (tv >= 0).all()

    def roughness(v):
        return torch.diff(v, dim=-1).abs().mean()

    assert roughness(tv) < roughness(plain)


def test_unknown_guidance_refused():
    with pytest.raises(ValueError, match="unknown guidance"):
        get_likelihood("l1")


def test_expected_deviance_and_discrepancy_stop():
    from pkl_dg.guidance.discrepancy import deviance_ratio, expected_deviance

    e = expected_deviance(torch.tensor([0.1, 1.0, 10.0, 1000.0, 1e5]))
    assert e[0] < 0.6 and 1.1 < e[1] < 1.2
    assert e[2] == pytest.approx(1 + 1 / 60, abs=0.01) and e[4] == pytest.approx(1.0, abs=1e-4)
    g = torch.Generator().manual_seed(0)
    mu = torch.rand(1, 1, 64, 64, generator=g) * 30 + 0.5
    y = torch.poisson(mu, generator=g)
    assert deviance_ratio(y, mu) == pytest.approx(1.0, abs=0.05)

    fm, x, y = _setup()
    x = torch.full_like(x, float(y.mean()))
    pkl = get_likelihood("pkl")
    full = GuidanceStep(pkl, "poisson", 1.0, 200)(x, y, fm)
    stopped = GuidanceStep(pkl, "poisson", 1.0, 200, discrepancy=1.0)(x, y, fm)
    r_full = float(deviance_ratio(y, fm.mean(full)))
    r_stop = float(deviance_ratio(y, fm.mean(stopped)))
    assert r_full < 0.9 < r_stop <= 1.0  # stopped right after reaching the noise level


def test_auto_discrepancy_target():
    from pkl_dg.guidance.steps import auto_discrepancy

    assert auto_discrepancy(0) == auto_discrepancy(10) == auto_discrepancy(30) == 1.0
    assert auto_discrepancy(100) == pytest.approx(0.95) and auto_discrepancy(1e5) == pytest.approx(0.95)
    mid = [auto_discrepancy(p) for p in (40, 55, 70, 90)]
    assert mid == sorted(mid, reverse=True) and 0.95 < min(mid) and max(mid) < 1.0


def _restore_metadata(y, **kw):
    """Metadata of a 2-step, 1-sample restore of ``y`` with a small untrained network."""
    from pkl_dg.diffusion.unet import UNet, UNetConfig
    from pkl_dg.restoration import restore_iter
    from pkl_dg.settings import RestoreSettings

    torch.manual_seed(0)
    net = UNet(UNetConfig(width=8, channel_mult=(1, 2), groups=4)).eval()
    kw = {"step_rule": "poisson", "lam": 1.0, "calibration": "manual", **kw}
    settings = RestoreSettings(psf_sigma=1.5, steps=2, samples=1, **kw)
    return restore_iter(y, settings, denoiser=net).finish().metadata  # one image: top level


def test_restore_applies_the_automatic_stop(scene):
    """discrepancy −1 (default) resolves to the photon-dependent target and stops early."""
    import warnings

    from pkl_dg.settings import RestoreSettings

    _, y, _, _ = scene
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # photon counts: no calibration warning
        auto, off = _restore_metadata(y), _restore_metadata(y, discrepancy=0)
    assert RestoreSettings().discrepancy == -1
    assert 0.95 <= auto["discrepancy"] <= 1.0 and off["discrepancy"] == 0
    assert auto["rough_deviance_ratio"] >= 0.8


def test_uncalibrated_data_switch_the_automatic_stop_off(scene):
    """Data far less noisy than photon counts (here: counts × 0.1) cannot use the stop."""
    from pkl_dg.inputs import CalibrationWarning

    _, y, _, _ = scene
    scaled = (y * 0.1).astype(np.float32)  # variance 0.1 × the mean
    with pytest.warns(CalibrationWarning, match="gain"):
        meta = _restore_metadata(scaled)
    assert meta["discrepancy"] == 0 and meta["rough_deviance_ratio"] < 0.8
    with pytest.warns(CalibrationWarning, match="end the guidance early"):
        meta = _restore_metadata(scaled, discrepancy=1.0)
    assert meta["discrepancy"] == 1.0


def test_auto_sub_iterations_grow_with_brightness():
    ks = [auto_sub_iterations(p) for p in (1, 7, 70, 700, 7000, 1e6)]
    assert ks == sorted(ks) and ks[0] >= 1 and ks[-1] == 120
    assert auto_sub_iterations(7) == 4 and auto_sub_iterations(0) == 1


def test_expected_deviance_follows_the_exact_series_in_each_dtype():
    from pkl_dg.guidance.discrepancy import _expected_deviance_np, expected_deviance

    mu = np.geomspace(2e-3, 900.0, 57)
    exact = _expected_deviance_np(mu)
    for dtype in (torch.float32, torch.float64):
        got = expected_deviance(torch.as_tensor(mu, dtype=dtype))
        assert got.dtype == dtype
        np.testing.assert_allclose(got.double().numpy(), exact, atol=2e-4)


def test_a_psf_that_cannot_fit_the_data_is_reported_once():
    """Sharp dots blurred by σ 1 px: restored with σ 1 the automatic RL stop ends near the
    noise level, quietly; with σ 3 (too wide to make the dots) it stalls far above it, and
    the run says so once, with the ratio, and records it in the metadata."""
    import warnings

    from scipy import ndimage

    from pkl_dg import restore_iter
    from pkl_dg.guidance.stopping import MISFIT_WARN, ModelMismatchWarning

    rng = np.random.default_rng(0)
    obj = np.zeros((96, 96))
    obj[rng.integers(8, 88, 60), rng.integers(8, 88, 60)] = 1.0
    blur = ndimage.gaussian_filter(obj, 1.0)
    y = rng.poisson(blur / blur.max() * 2000 + 5).astype(np.float32)
    kw = dict(method="rl", calibration="manual", gain=1.0, offset=0.0, read_noise=0.0,
              background=5.0, device="cpu")
    for sigma, misfit in ((1.0, False), (3.0, True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            md = restore_iter(y, psf_sigma=sigma, **kw).finish().metadata
        said = [w for w in caught if issubclass(w.category, ModelMismatchWarning)]
        assert len(said) == int(misfit), (sigma, md["rl_auto_deviance_ratio"])
        assert ("rl_auto_misfit" in md) == misfit
        assert (md["rl_auto_deviance_ratio"] > MISFIT_WARN * md["rl_auto_noise_target"]) == misfit
    assert f"{md['rl_auto_deviance_ratio']:.1f}×" in str(said[0].message)
    # the reason comes first: a napari notification shows its first few words until opened
    assert str(said[0].message).startswith("The PSF does not fit this image")
    # a stack with the same problem in every plane: one warning, then one summary
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restore_iter(np.stack([y, y, y]), psf_sigma=3.0, **kw).finish()
    said = [str(w.message) for w in caught if issubclass(w.category, ModelMismatchWarning)]
    assert len(said) == 2 and "in 3 of 3 planes" in said[1]


def test_the_stop_rules_deviance_ratio_equals_the_per_pixel_one():
    """DevianceRatio (the automatic stop's: the data's own sum taken once, one shared log)
    gives deviance_ratio's value, with zero counts, dim and very bright predictions, and
    an iterate's mean_at equals its mean() at those pixels."""
    from pkl_dg.guidance.discrepancy import DevianceRatio, deviance_ratio
    from pkl_dg.richardson_lucy import rl_iterates

    g = torch.Generator().manual_seed(4)
    mu = torch.cat([torch.rand(500, generator=g) * 1e-3, torch.rand(3000, generator=g) * 20,
                    1e3 + torch.rand(500, generator=g) * 1e5])
    y = torch.poisson(mu, generator=g)
    assert bool((y == 0).any())
    ratio = DevianceRatio(y)
    for pred in (mu, mu * 1.3 + 0.5, torch.full_like(mu, float(y.mean()))):
        assert ratio(pred) == pytest.approx(float(deviance_ratio(y[None], pred[None])), rel=1e-5)
    with pytest.raises(ValueError, match="predicted values"):
        ratio(mu[:10])
    psf = torch.as_tensor(gaussian_psf(1.5), dtype=torch.float32)
    fm = ForwardModel(PSFConvolution(psf), 2.0, 0.5)
    img = torch.poisson(torch.rand(48, 40, generator=g) * 50 + 2, generator=g)
    where = torch.tensor([0, 7, 100, 48 * 40 - 1])
    for it in rl_iterates(img, fm, 2):
        assert torch.equal(it.mean_at(where), it.mean().reshape(-1)[where])

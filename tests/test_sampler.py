import pytest
import torch

from pkl_dg.diffusion.mapping import IntensityMapping, scale_from_estimate
from pkl_dg.diffusion.sampler import Guidance, Problem, guided_ddim
from pkl_dg.diffusion.schedule import (DDIMScheduler, cosine_alphas_cumprod, ddim_timesteps,
                                       q_sample)
from pkl_dg.guidance import GuidanceStep, get_likelihood
from pkl_dg.guidance.steps import auto_sub_iterations
from pkl_dg.physics import ForwardModel, PSFConvolution


def _problem(scene):
    x, y, psf, b = scene
    fm = ForwardModel(PSFConvolution(psf), background=b)
    return torch.from_numpy(y), fm, IntensityMapping(1.2 * float(x.max()))


def _ddim(denoiser, y, fm, mapping, *, steps=25, eta=0.0, guidance=None, misfit=None,
          t_threshold=800, ramp="linear", **kw):
    """guided_ddim with the sampler's parameters as keywords."""
    return guided_ddim(denoiser, Problem(y, fm, mapping), DDIMScheduler(steps, eta),
                       Guidance(guidance, t_threshold, ramp, misfit), **kw)


def test_cosine_schedule_properties():
    ac = cosine_alphas_cumprod()
    assert ac.shape == (1000,)
    assert torch.all(ac[1:] < ac[:-1]) and 0.99 < ac[0] < 1 and 0 < ac[-1] < 1e-4
    ts = ddim_timesteps(25)
    assert len(ts) == 25 and ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    x0, noise = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    assert torch.allclose(q_sample(x0, torch.tensor([0, 999]), noise, ac)[0], ac[0].sqrt().float())


def test_mapping_round_trip_and_scale():
    m = IntensityMapping(200.0)
    x = torch.tensor([0.0, 100.0, 200.0])
    assert torch.allclose(m.to_model(x), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(m.to_intensity(m.to_model(x)), x)
    assert scale_from_estimate(torch.linspace(0, 100, 10001)) == pytest.approx(1.2 * 99.9, rel=1e-3)
    with pytest.raises(ValueError, match="no signal"):
        scale_from_estimate(torch.zeros(10, 10))


def test_yields_steps_frames_and_stops_when_closed(scene, constant_denoiser):
    y, fm, mapping = _problem(scene)
    frames = list(_ddim(constant_denoiser, y, fm, mapping, steps=7))
    assert [f.index for f in frames] == list(range(1, 8))
    assert all(f.total == 7 for f in frames) and frames[-1].t == 0
    assert frames[0].x0.shape == (1, *y.shape) and frames[0].x0.dtype == torch.float32

    constant_denoiser.calls = 0
    gen = _ddim(constant_denoiser, y, fm, mapping, steps=50)
    next(gen), next(gen)
    gen.close()
    assert constant_denoiser.calls == 2
    with pytest.raises(StopIteration):
        next(gen)


def test_unguided_returns_the_prior_mean(scene, constant_denoiser):
    y, fm, mapping = _problem(scene)
    last = list(_ddim(constant_denoiser, y, fm, mapping, steps=5))[-1]
    expected = mapping.to_intensity(torch.tensor(constant_denoiser.value))
    assert torch.allclose(last.x0, expected.expand_as(last.x0), rtol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_same_seed_same_output(scene, constant_denoiser, eta):
    y, fm, mapping = _problem(scene)
    guid = GuidanceStep(get_likelihood("pkl"), sub_iterations=2)

    def run(seed):
        net = torch.nn.Conv2d(1, 1, 3, padding=1)
        torch.nn.init.constant_(net.weight, 0.05)
        torch.nn.init.zeros_(net.bias)
        gen = torch.Generator().manual_seed(seed)
        frames = _ddim(lambda x, t: net(x), y, fm, mapping, steps=6, eta=eta,
                             guidance=guid, generator=gen)
        return list(frames)[-1].x0

    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_guidance_lowers_data_misfit_clearly(scene, constant_denoiser):
    """Poisson-rule guidance must matter (upstream's was inert). (The default proximal rule
    ends on the prior's x̂0 as t → 0, so a constant prior says nothing about it: see
    tests/test_proximal.py.)"""
    from pkl_dg.settings import RestoreSettings

    s = RestoreSettings()
    y, fm, mapping = _problem(scene)
    pkl = get_likelihood("pkl")
    k = s.sub_iterations or auto_sub_iterations(float(y.max()))
    guid = GuidanceStep(pkl, "poisson", 1.0, k)
    kw = dict(steps=10, misfit=pkl, t_threshold=s.t_threshold, ramp=s.ramp)
    unguided = list(_ddim(constant_denoiser, y, fm, mapping, **kw))[-1]
    guided = list(_ddim(constant_denoiser, y, fm, mapping, guidance=guid, **kw))[-1]
    yb = y[None, None]
    # the minimum achievable misfit is bounded below by the saturated model μ = y
    floor = float((y - y.clamp(min=1e-6).log() * y).sum())
    gap_unguided = float(unguided.nll) - floor
    gap_guided = float(guided.nll) - floor
    assert gap_guided < 0.2 * gap_unguided
    assert float(pkl.nll(guided.x0, yb, fm)) == pytest.approx(float(guided.nll))


def test_batch_of_samples_and_bf16_autocast(scene):
    y, fm, mapping = _problem(scene)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.SiLU(),
                              torch.nn.Conv2d(4, 1, 3, padding=1))
    gen = torch.Generator().manual_seed(0)
    frames = list(_ddim(lambda x, t: net(x), y, fm, mapping, steps=3, num_samples=3,
                              guidance=GuidanceStep(get_likelihood("anscombe")),
                              generator=gen, autocast_dtype=torch.bfloat16))
    last = frames[-1]
    assert last.x0.shape == (3, *y.shape) and last.x0.dtype == torch.float32
    assert last.nll.shape == (3,) and torch.isfinite(last.x0).all()
    assert not torch.equal(last.x0[0], last.x0[1])  # different noise per sample


def test_rejects_bad_arguments(scene, constant_denoiser):
    y, fm, mapping = _problem(scene)
    with pytest.raises(ValueError, match="η"):
        next(_ddim(constant_denoiser, y, fm, mapping, eta=2.0))
    with pytest.raises(ValueError, match="steps"):
        next(_ddim(constant_denoiser, y, fm, mapping, steps=0))


def test_quantile_by_selection_matches_torch_quantile():
    from pkl_dg.quantiles import quantile

    g = torch.Generator().manual_seed(5)
    v = torch.rand(301, 257, generator=g) ** 3 * 1000  # skewed, odd count
    for q in (0.0, 0.01, 0.5, 0.75, 0.999, 1.0):
        assert quantile(v, q) == pytest.approx(float(torch.quantile(v.reshape(-1), q)),
                                               rel=1e-6, abs=1e-6)
    with pytest.raises(ValueError, match="empty"):
        quantile(v[v < 0], 0.5)

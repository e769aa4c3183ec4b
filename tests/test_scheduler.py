"""The DDIM scheduler (Song et al. 2021, eq. 12 and 16) and the run objects of restore_iter."""

import math

import numpy as np
import pytest
import torch

from pkl_dg.diffusion.schedule import DDIMScheduler, cosine_alphas_cumprod, q_sample


@pytest.mark.parametrize("steps", [1, 2, 7, 25, 1000])
def test_timesteps_strictly_decreasing_from_T_minus_1_to_0(steps):
    ts = DDIMScheduler(steps).timesteps
    assert len(ts) == steps and ts[0] == 999
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert steps == 1 or ts[-1] == 0


def test_rejects_bad_steps_eta_and_timesteps():
    with pytest.raises(ValueError, match="η"):
        DDIMScheduler(10, eta=1.5)
    with pytest.raises(ValueError, match="steps"):
        DDIMScheduler(0)
    with pytest.raises(ValueError, match="steps"):
        DDIMScheduler(1001)
    with pytest.raises(ValueError, match="timestep 5"):
        DDIMScheduler(10).step(torch.zeros(1), torch.zeros(1), 5)


def test_predict_x0_and_eps_invert_the_noising():
    ac = cosine_alphas_cumprod()
    sched = DDIMScheduler(25)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((2, 1, 8, 8), generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn((2, 1, 8, 8), generator=g, dtype=torch.float64)
    for t in sched.timesteps[:-1]:  # x̂0 from t = 0 is ill-conditioned only by round-off
        x_t = q_sample(x0, torch.tensor([t, t]), eps, ac)
        assert torch.allclose(sched.predict_x0(x_t, eps, t), x0, atol=1e-8)
        assert torch.allclose(sched.predict_eps(x_t, x0, t), eps, atol=1e-8)
    t = 0
    x_t = q_sample(x0, torch.tensor([t, t]), eps, ac)
    assert torch.allclose(sched.predict_x0(x_t, eps, t), x0, atol=1e-8)


def _old_update(x, z0, a_t, a_prev, eta, noise):
    """The update the sampler wrote inline before the scheduler existed."""
    eps = (x - math.sqrt(a_t) * z0) / math.sqrt(1 - a_t)
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
    x = math.sqrt(a_prev) * z0 + math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)) * eps
    return x + sigma * noise if sigma > 0 else x


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_step_reproduces_the_old_update(eta):
    sched = DDIMScheduler(6, eta)
    ac = cosine_alphas_cumprod().tolist()
    g = torch.Generator().manual_seed(1)
    x = torch.randn((3, 1, 16, 16), generator=g)
    z0 = torch.rand((3, 1, 16, 16), generator=g)
    ts = sched.timesteps
    for i, t in enumerate(ts[:-1]):
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        new = sched.step(x, z0, t, torch.Generator().manual_seed(i))
        old = _old_update(x, z0, ac[t], ac[ts[i + 1]], eta, noise)
        assert torch.equal(new, old)
        assert sched.alpha_bar(t) == ac[t] and sched.alpha_bar_prev(t) == ac[ts[i + 1]]
    # the last step has nothing left to add: it returns x̂0 itself
    assert sched.step(x, z0, ts[-1]) is z0 and sched.sigma(ts[-1]) == 0.0


def test_step_with_eta_0_is_deterministic_and_eta_1_is_the_ddpm_posterior():
    x, z0 = torch.randn(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    det = DDIMScheduler(10, 0.0)
    t = det.timesteps[3]
    a = det.step(x, z0, t, torch.Generator().manual_seed(0))
    b = det.step(x, z0, t, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and det.sigma(t) == 0.0
    ddpm = DDIMScheduler(10, 1.0)
    a_t, a_prev = ddpm.alpha_bar(t), ddpm.alpha_bar_prev(t)
    beta = 1 - a_t / a_prev  # the DDPM posterior variance β̃ = (1−ᾱ_prev)/(1−ᾱ_t)·β_t
    assert ddpm.sigma(t) == pytest.approx(math.sqrt((1 - a_prev) / (1 - a_t) * beta))
    assert not torch.equal(ddpm.step(x, z0, t, torch.Generator().manual_seed(0)),
                           ddpm.step(x, z0, t, torch.Generator().manual_seed(1)))


def test_noise_level_of_x0():
    sched = DDIMScheduler(5)
    for t in sched.timesteps:
        a = sched.alpha_bar(t)
        assert sched.x0_noise_level(t) == pytest.approx(math.sqrt((1 - a) / a))


def test_restore_run_result_and_generator_compatibility():
    from pkl_dg.restoration import RestoreRun, restore_iter

    y = np.random.default_rng(0).poisson(20.0, (32, 32)).astype(np.float32)
    run = restore_iter(y, method="rl", rl_iterations=3, psf_sigma=1.5)
    assert isinstance(run, RestoreRun) and iter(run) is run
    with pytest.raises(RuntimeError, match="not ended"):
        run.result
    first = next(run)
    assert first.index == 1 and first.total == 3
    rest = []
    while True:  # callers written for the generator read the result from StopIteration
        try:
            rest.append(next(run))
        except StopIteration as stop:
            value = stop.value
            break
    assert len(rest) == 2 and value is run.result
    assert np.array_equal(run.result.image, rest[-1].image)
    with pytest.raises(StopIteration):
        next(run)
    assert run.result is value
    frames = []
    again = restore_iter(y, method="rl", rl_iterations=3, psf_sigma=1.5).finish(frames.append)
    assert len(frames) == 3 and np.array_equal(again.image, value.image)
    stopped = restore_iter(y, method="rl", rl_iterations=3, psf_sigma=1.5)
    next(stopped)
    stopped.close()
    with pytest.raises(StopIteration):
        next(stopped)
    with pytest.raises(RuntimeError):
        stopped.result

"""Large images run their posterior samples one group at a time, with the same result."""

import numpy as np
import pytest

import pkl_dg.diffusion.sampler as sampler
from pkl_dg.diffusion.sampler import sample_groups
from pkl_dg.restoration import restore_iter


def test_groups_cover_the_samples_within_the_budget(monkeypatch):
    monkeypatch.setattr(sampler, "GROUP_VOXELS", 100)
    assert sample_groups(4, 10) == [range(0, 4)]
    assert sample_groups(4, 30) == [range(0, 3), range(3, 4)]
    assert sample_groups(4, 1000) == [range(i, i + 1) for i in range(4)]
    assert sample_groups(1, 10**9) == [range(0, 1)]


def test_a_large_gpu_runs_the_samples_of_a_large_image_together(monkeypatch):
    import torch

    assert sampler.group_budget("cpu") == sampler.GROUP_VOXELS
    assert len(sample_groups(4, 2048 * 2048, sampler.group_budget("cpu"))) == 4
    from types import SimpleNamespace

    def card(gib):
        return lambda device=None: SimpleNamespace(total_memory=gib * 2**30)

    monkeypatch.setattr(torch.cuda, "get_device_properties", card(140))  # an H200
    budget = sampler.group_budget("cuda")
    assert budget == 140 * 2**30 // 4 // sampler.GPU_BYTES_PER_VOXEL
    assert sample_groups(4, 2048 * 2048, budget) == [range(0, 4)]
    assert sample_groups(4, 4096 * 4096, budget) == [range(0, 4)]
    # a 4 GB card never gets less than the host budget
    monkeypatch.setattr(torch.cuda, "get_device_properties", card(4))
    assert sampler.group_budget("cuda") == sampler.GROUP_VOXELS


@pytest.mark.parametrize("method", ["pkl", "l2"])
def test_one_sample_at_a_time_gives_the_batched_result(monkeypatch, scene, method):
    _, y, psf, _ = scene
    kw = dict(psf=psf, method=method, steps=4, samples=3, seed=5, calibration="manual")
    batched = restore_iter(y, **kw)
    frames = list(batched)
    assert len(frames) == 5  # 4 steps and the final denoising pass
    monkeypatch.setattr(sampler, "GROUP_VOXELS", 1)  # every sample a group of its own
    grouped = restore_iter(y, **kw)
    gframes = list(grouped)
    assert len(gframes) == 13 and gframes[-1].index == gframes[-1].total == 13
    np.testing.assert_allclose(grouped.result.image, batched.result.image, rtol=1e-5,
                               atol=1e-5 * float(batched.result.image.max()))
    np.testing.assert_allclose(grouped.result.std, batched.result.std, rtol=1e-4,
                               atol=1e-4 * float(batched.result.std.max()))
    # the live frame of a later group is the mean of the finished samples and the current one
    assert not np.allclose(gframes[4].image, gframes[0].image)


def test_final_pass_is_identity_for_a_denoiser_that_finds_no_noise_and_keeps_bright_spots():
    """ε̂ = 0 means x̂0 = x_t/√ᾱ = the input; a spot above the prior's range is kept."""
    import torch

    from pkl_dg.diffusion.mapping import IntensityMapping
    from pkl_dg.diffusion.sampler import Problem, final_denoise
    from pkl_dg.diffusion.schedule import DDIMScheduler
    from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf

    x0 = torch.rand(2, 24, 24) * 10.0
    x0[:, 5, 5] = 1e4  # 1000 × the scale
    problem = Problem(torch.zeros(24, 24), ForwardModel(PSFConvolution(gaussian_psf(1.0)), 0.0),
                      IntensityMapping(10.0))
    seen = []

    def no_noise(x, t):
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    out, t = final_denoise(no_noise, x0, problem, DDIMScheduler(10, 1.0), 0.5)
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-4)
    assert t > 0 and seen  # 0.5·√(mean ≈ 5 photons) of noise on a scale of 10: t* > 0


def test_final_pass_level_grows_with_the_noise_fraction():
    from pkl_dg.diffusion.schedule import DDIMScheduler

    s = DDIMScheduler(10, 1.0)
    assert s.timestep_for(0.0) == 0
    ts = [s.timestep_for(v) for v in (0.01, 0.1, 1.0, 10.0)]
    assert ts == sorted(ts) and ts[0] < ts[-1]


def test_final_pass_level_adds_the_monte_carlo_error_of_the_sample_mean():
    """mean_mc_error is the RMS sample std / √N; the pass level is √(grain² + error²)."""
    import math

    import torch

    from pkl_dg.diffusion.mapping import IntensityMapping
    from pkl_dg.diffusion.mc_error import mean_mc_error, sample_spread
    from pkl_dg.diffusion.sampler import Problem, final_denoise
    from pkl_dg.diffusion.schedule import DDIMScheduler
    from pkl_dg.physics import ForwardModel, PSFConvolution, gaussian_psf

    g = torch.Generator().manual_seed(0)
    samples = 100.0 + 3.0 * torch.randn(16, 64, 64, generator=g)
    assert mean_mc_error(samples) == pytest.approx(3.0 / 4.0, rel=0.02)
    assert mean_mc_error(samples[:1]) == 0.0
    # the per-pixel spread (the uncertainty map) is torch's unbiased std over the samples
    spread = sample_spread(samples)
    assert spread.shape == (64, 64)
    assert torch.allclose(spread, samples.std(dim=0), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="two or more"):
        sample_spread(samples[:1])
    problem = Problem(torch.zeros(64, 64), ForwardModel(PSFConvolution(gaussian_psf(1.0)), 0.0),
                      IntensityMapping(1000.0))
    sched = DDIMScheduler(10, 1.0)
    x0 = samples.mean(0, keepdim=True)
    ident = lambda x, t: torch.zeros_like(x)  # noqa: E731
    _, t_grain = final_denoise(ident, x0, problem, sched, 0.5)
    _, t_both = final_denoise(ident, x0, problem, sched, 0.5, mc_error=40.0)
    # grain 0.5·√100 = 5 photons; with an error of 40 the level is √(5² + 40²) = 40.3
    target = 2.0 * math.hypot(5.0, 40.0) / 1000.0
    assert t_both > t_grain
    assert sched.x0_noise_level(math.floor(t_both)) <= target * 1.01
    assert sched.x0_noise_level(math.ceil(t_both)) >= target * 0.99


@pytest.mark.parametrize("final_noise", [0.0, 0.5])
def test_a_later_group_streams_its_own_samples_and_the_mean_of_all_so_far(monkeypatch, scene,
                                                                         final_noise):
    """From the second group on a record holds the current group's x̂0 and the running mean
    of every sample so far (one image, not a copy of all samples each frame); the last
    record holds every sample, and the final pass moves them all by the same correction."""
    import torch

    from pkl_dg.diffusion.mapping import IntensityMapping
    from pkl_dg.diffusion.sampler import Guidance, Problem, guided_ddim_grouped
    from pkl_dg.diffusion.schedule import DDIMScheduler
    from pkl_dg.guidance import GuidanceStep, get_likelihood
    from pkl_dg.physics import ForwardModel, PSFConvolution

    x, y, psf, b = scene
    monkeypatch.setattr(sampler, "GROUP_VOXELS", y.size)  # one sample per group
    problem = Problem(torch.from_numpy(y), ForwardModel(PSFConvolution(psf), background=b),
                      IntensityMapping(1.2 * float(x.max())))
    steps, n = 3, 3
    recs = list(guided_ddim_grouped(lambda z, t: 0.3 * z, problem, DDIMScheduler(steps, 1.0),
                                    Guidance(GuidanceStep(get_likelihood("pkl"), "proximal",
                                                          sub_iterations=2)),
                                    num_samples=n, final_noise=final_noise))
    assert len(recs) == steps * n + (final_noise > 0)
    ends = [recs[steps * g - 1].x0[-1:] for g in range(1, n + 1)]  # each group's last x̂0
    for r in recs[:steps]:
        assert r.x0.shape[0] == 1 and r.mean is None
    for i, r in enumerate(recs[steps:-1], start=steps):
        done = ends[: i // steps]
        assert r.x0.shape == (1, *y.shape) and r.mean.shape == (1, *y.shape)
        torch.testing.assert_close(r.mean, torch.cat([*done, r.x0]).mean(dim=0, keepdim=True))
    assert not torch.allclose(ends[0], ends[1])  # the samples differ: the mean is not trivial
    last, every = recs[-1], torch.cat(ends)
    assert last.x0.shape == (n, *y.shape)
    if final_noise:
        torch.testing.assert_close(last.x0 - last.mean, every - every.mean(dim=0, keepdim=True),
                                   rtol=1e-5, atol=1e-4)
    else:
        assert last.mean is None and torch.equal(last.x0, every)


def test_the_rough_estimate_frees_its_buffers_before_the_sampler_runs(monkeypatch, scene):
    """The automatic RL run that sets the scale and the data budget holds images and an
    FFT workspace: none of it stays alive through the diffusion steps."""
    import gc
    import weakref

    import pkl_dg.richardson_lucy as rl

    loops = []

    class Tracked(rl._RLLoop):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            loops.append(weakref.ref(self))

    monkeypatch.setattr(rl, "_RLLoop", Tracked)
    _, y, psf, _ = scene
    run = restore_iter(y, psf=psf, steps=3, samples=2, calibration="manual")
    next(run)  # the rough estimate has run; the sampler is at its first step
    gc.collect()
    assert loops and all(ref() is None for ref in loops)
    list(run)

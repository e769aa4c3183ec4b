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


@pytest.mark.parametrize("method", ["pkl", "l2"])
def test_one_sample_at_a_time_gives_the_batched_result(monkeypatch, scene, method):
    _, y, psf, _ = scene
    kw = dict(psf=psf, method=method, steps=4, samples=3, seed=5, calibration="manual")
    batched = restore_iter(y, **kw)
    frames = list(batched)
    assert len(frames) == 4
    monkeypatch.setattr(sampler, "GROUP_VOXELS", 1)  # every sample a group of its own
    grouped = restore_iter(y, **kw)
    gframes = list(grouped)
    assert len(gframes) == 12 and gframes[-1].index == gframes[-1].total == 12
    np.testing.assert_allclose(grouped.result.image, batched.result.image, rtol=1e-5,
                               atol=1e-5 * float(batched.result.image.max()))
    np.testing.assert_allclose(grouped.result.std, batched.result.std, rtol=1e-4,
                               atol=1e-4 * float(batched.result.std.max()))
    # the live frame of a later group is the mean of the finished samples and the current one
    assert not np.allclose(gframes[4].image, gframes[0].image)

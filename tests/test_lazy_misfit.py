"""Issue 18, item 2: a guided run computes the data misfit of a step only when it is read.

The misfit costs a convolution per sample each step; the napari widget never shows it."""

from __future__ import annotations

import numpy as np
import pytest

from pkl_dg.diffusion import sampler
from pkl_dg.guidance.likelihoods import PoissonKL
from pkl_dg.restoration import restore_iter
from test_misfit_and_outputs import sparse_on_zeros


@pytest.fixture
def counted_nll(monkeypatch):
    calls = []
    original = PoissonKL.nll

    def nll(self, x, y, fm):
        calls.append(tuple(x.shape))
        return original(self, x, y, fm)

    monkeypatch.setattr(PoissonKL, "nll", nll)
    return calls


def _frames(denoiser):
    frames = []
    restore_iter(sparse_on_zeros(), method="pkl", steps=4, samples=2, psf_sigma=2.0,
                 seed=3, denoiser=denoiser).finish(frames.append)
    return frames


@pytest.mark.parametrize("groups", [1, 2])
def test_the_misfit_is_computed_only_when_read_and_matches_a_read_during_the_run(
        groups, constant_denoiser, counted_nll, monkeypatch):
    if groups == 2:  # each sample a group of its own: the records join the groups' misfits
        monkeypatch.setattr(sampler, "GROUP_VOXELS", 96 * 96)
    frames = _frames(constant_denoiser)
    assert len(frames) == 4 * groups + 1  # steps × groups + the final pass
    assert counted_nll == []  # nobody read it: never computed
    late = [f.nll for f in frames]  # read after the run, in any order
    computed = len(counted_nll)
    assert computed == 4 * groups  # once per step of each group, the final pass reuses
    assert [f.nll for f in frames] == late and len(counted_nll) == computed  # kept

    during = []  # read while the run is paused at each frame
    restore_iter(sparse_on_zeros(), method="pkl", steps=4, samples=2, psf_sigma=2.0,
                 seed=3, denoiser=constant_denoiser).finish(lambda f: during.append(f.nll))
    assert all(np.isfinite(late)) and np.allclose(late, during, rtol=1e-6, atol=0)
    assert late[-1] == late[-2]  # the final pass repeats the last step's misfit
